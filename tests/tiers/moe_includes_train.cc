// Not part of any build: tests/CMakeLists.txt compiles this file as part of the moe tier and
// expects the compiler to fail because the train tier's headers are not on the moe tier's include
// path. It proves that the CMake tier graph is enforced, not just written down.
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/train/trainer.h"
