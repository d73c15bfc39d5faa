// safetensors round trip and every corrupt-file error; atomic writes leave no temporary files
// and keep the old file when a write fails.
#include <gtest/gtest.h>

#include <filesystem>

#include "sparsemoe/io/file_io.h"
#include "sparsemoe/io/safetensors.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::string& bytes) {
  try {
    decode_safetensors(bytes, "x.safetensors");
  } catch (const IoError& e) {
    return e.what();
  }
  return "no error";
}

// A file from a hand-written header and data (for corrupt cases the writer cannot produce).
std::string raw(const std::string& header, size_t data_bytes) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripKeepsOrderShapesValuesAndMetadata) {
  const Tensor a = test::random_tensor({3, 5}, 1), b = test::random_tensor({7}, 2), empty({0, 4});
  const Tensor scalar({}, {2.5f});
  const std::string path = testing::TempDir() + "/rt.safetensors";
  save_safetensors(path, {{"z/a", &a}, {"b", &b}, {"empty", &empty}, {"s", &scalar}},
                   {{"step", "12"}});
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  const SafetensorsFile f = load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), 4u);
  EXPECT_EQ(f.tensors[0].first, "z/a");
  EXPECT_EQ(f.tensors[1].first, "b");
  EXPECT_TRUE(test::bitwise_equal(f.at("z/a"), a));
  EXPECT_TRUE(test::bitwise_equal(f.at("b"), b));
  EXPECT_EQ(f.at("empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(f.at("s")[0], 2.5f);
  EXPECT_EQ(f.metadata.at("step"), "12");
  EXPECT_THROW(f.at("nope"), IoError);
  for (const auto& e : fs::directory_iterator(testing::TempDir()))
    EXPECT_EQ(e.path().filename().string().find(".rt.safetensors.tmp"), std::string::npos);
}

TEST(Safetensors, CorruptFilesGiveClearErrors) {
  const Tensor a({2}, {1, 2});
  const std::string good = encode_safetensors({{"a", &a}});
  EXPECT_EQ(error_of(good), "no error");
  EXPECT_NE(error_of("abc").find("shorter than the 8-byte header length"), std::string::npos);
  EXPECT_NE(error_of(good.substr(0, 12)).find("runs past the end"), std::string::npos);
  EXPECT_NE(error_of(raw("{not json", 0)).find("header: invalid JSON: parse error"),
            std::string::npos);
  // Hostile headers (issue 12): a duplicate name, a shape whose size overflows 64 bits (it would
  // wrap to 0 bytes and match empty data_offsets), a fractional dimension.
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         8))
                .find("duplicate key 'a'"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],)"
                         R"("data_offsets":[0,0]}})",
                         0))
                .find("has more elements than 64-bit sizes hold"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4))
                .find("shape[0]: expected an integer, got 1.5"),
            std::string::npos);
  EXPECT_NE(error_of(raw("[1]", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4))
                .find("dtype \"F16\"; expected \"F32\""),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8))
                .find("needs 12 bytes"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12))
                .find("a hole of 4 bytes"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         8))
                .find("overlaps"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12))
                .find("4 bytes after the last tensor"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", 8))
                .find("outside the 8-byte data"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))
                .find("negative"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a":{"shape":[2]}})", 8)).find("lacks dtype"), std::string::npos);
  EXPECT_NE(error_of(raw(R"({"__metadata__":{"k":1}})", 0)).find("not a string"),
            std::string::npos);
  EXPECT_THROW(load_safetensors(testing::TempDir() + "/missing.safetensors"), IoError);
}

TEST(FileIo, AtomicWriteReplacesWholeAndFailsWithoutDamage) {
  const std::string dir = testing::TempDir() + "/atomic", path = dir + "/f.txt";
  fs::create_directories(dir);
  write_file_atomic(path, "first");
  write_file_atomic(path, "second, longer");
  EXPECT_EQ(read_file(path), "second, longer");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  // A directory that does not exist: an error naming the path, and nothing else touched.
  try {
    write_file_atomic(dir + "/no/such/dir/f.txt", "x");
    FAIL() << "expected an error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir/f.txt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(path), "second, longer");
}

}  // namespace
}  // namespace sparsemoe
