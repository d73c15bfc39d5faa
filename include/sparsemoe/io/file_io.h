// Whole-file reads and crash-safe writes. write_file_atomic writes a temporary file in the
// target's directory, fsyncs it, renames it over the target and fsyncs the directory: a reader
// (or a crash) sees either the old file or the new one, never a partial write.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace sparsemoe {

// A file that cannot be read, written or parsed. The message names the path.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The temporary file is ".NAME.tmpXXXXXX" beside the target; a crash may leave one behind, and
// remove_stale_temporaries() deletes those of a directory (call it only while holding its lock).
void write_file_atomic(const std::string& path, std::string_view bytes);
std::string read_file(const std::string& path);
// Appends bytes to path (created if absent) with one write per call; sync() makes it durable.
void append_file(const std::string& path, std::string_view bytes);
void sync_file(const std::string& path);
// Deletes the temporaries that write_file_atomic leaves in dir when it is killed mid-write.
// Returns how many it removed.
int remove_stale_temporaries(const std::string& dir);

// An exclusive advisory lock (flock) on a file, held while the object lives and released by the
// kernel when the process dies, so a killed holder never leaves a stale lock. The file records
// the holder's pid for the error message of the next one.
class FileLock {
 public:
  // Throws IoError when the file cannot be created (a read-only directory, say) and
  // LockedError when another process holds the lock.
  explicit FileLock(const std::string& path);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

class LockedError : public IoError {
 public:
  using IoError::IoError;
};

}  // namespace sparsemoe
