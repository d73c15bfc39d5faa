// Kept so that code written against 0.1 (#include "sparsemoe/layers/moe_layer.h") still builds;
// the MoE layer lives in the moe tier.
#pragma once

#include "sparsemoe/moe/moe_layer.h"
