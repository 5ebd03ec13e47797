// Crash-safe writes: everything goes to a temporary name, is fsync'ed, then renamed over the
// final name, so a kill at any moment leaves either the previous file or the new one, never a
// half-written one. Used for safetensors, JSON files, datasets and checkpoint directories.
#pragma once

#include <cstddef>
#include <string>

namespace moex::io {

// A file being written to `<path>.tmp`. commit() makes it `<path>`; destroying it without
// commit() (an exception midway) removes the temporary and leaves `<path>` untouched.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  size_t bytes_written() const { return written_; }
  // fsync, rename to the final path, fsync the directory. Errors name the file.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  size_t written_ = 0;
};

// Writes `contents` to `path` atomically (JSON manifests, configs, small files).
void write_file_atomic(const std::string& path, const std::string& contents);

// Throws (naming `flag` and the path) unless `path` is absent, an empty directory, or a directory
// that holds a model (config.json): what a command writing a model there may replace. Anything
// else (a file, a directory of other things) is the user's, and is not deleted.
void check_model_output_dir(const std::string& path, const char* flag);
// The same for any output directory that holds a `marker` file when it is one of `what` (e.g.
// "corpus.json", "corpus").
void check_output_dir(const std::string& path, const char* flag, const char* marker,
                      const char* what);

// A directory built under `<path>.tmp/` and swapped in by commit(): an existing `<path>` is
// first renamed to `<path>.old` and removed after the new one is in place. Destroying it
// without commit() removes the temporary directory.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(const std::string& path);
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;

  // Where to write the files now.
  const std::string& temp_path() const { return temp_path_; }
  const std::string& path() const { return path_; }
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  bool committed_ = false;
};

// fsync of the directory holding `path`, so that a rename in it is durable.
void fsync_parent_directory(const std::string& path);

}  // namespace moex::io
