#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moex::io {

namespace fs = std::filesystem;

AtomicFile::AtomicFile(const std::string& path) : path_(path), temp_path_(path + ".tmp") {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOEX_CHECK(fd_ >= 0, temp_path_, ": cannot create (", std::strerror(errno), ")");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  MOEX_CHECK(fd_ >= 0, path_, ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    MOEX_CHECK(n > 0, temp_path_, ": write failed (", std::strerror(errno), ")");
    p += n;
    bytes -= static_cast<size_t>(n);
    written_ += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  MOEX_CHECK(fd_ >= 0, path_, ": committed twice");
  MOEX_CHECK(::fsync(fd_) == 0, temp_path_, ": fsync failed (", std::strerror(errno), ")");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(temp_path_.c_str());
    MOEX_THROW(temp_path_, ": close failed (", std::strerror(errno), ")");
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    MOEX_THROW(path_, ": rename from ", temp_path_, " failed (", std::strerror(err), ")");
  }
  fsync_parent_directory(path_);
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

void fsync_parent_directory(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;  // best effort: some file systems do not allow opening directories
  ::fsync(dfd);
  ::close(dfd);
}

void check_output_dir(const std::string& path, const char* flag, const char* marker,
                      const char* what) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) return;
  MOEX_CHECK(fs::is_directory(status), flag, " ", path,
             " exists and is not a directory; it is not replaced (choose another path)");
  MOEX_CHECK(fs::is_empty(path, ec) || fs::is_regular_file(fs::path(path) / marker), flag, " ",
             path, " is a directory that holds no ", what, " (no ", marker,
             "); it is not replaced (choose another path or empty it)");
}

void check_model_output_dir(const std::string& path, const char* flag) {
  check_output_dir(path, flag, "config.json", "model");
}

AtomicDirectory::AtomicDirectory(const std::string& path) : path_(path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  path_ = trimmed;
  temp_path_ = path_ + ".tmp";
  std::error_code ec;
  fs::remove_all(temp_path_, ec);  // leftovers of an earlier interrupted write
  fs::create_directories(temp_path_, ec);
  MOEX_CHECK(!ec, temp_path_, ": cannot create directory (", ec.message(), ")");
}

AtomicDirectory::~AtomicDirectory() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(temp_path_, ec);
  }
}

void AtomicDirectory::commit() {
  MOEX_CHECK(!committed_, path_, ": committed twice");
  // Make every file inside durable before the directory becomes visible under its name.
  for (const auto& entry : fs::recursive_directory_iterator(temp_path_)) {
    if (!entry.is_regular_file()) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
  fsync_parent_directory(temp_path_ + "/x");
  const std::string old_path = path_ + ".old";
  std::error_code ec;
  const bool had_previous = fs::exists(path_);
  if (had_previous) {
    fs::remove_all(old_path, ec);
    fs::rename(path_, old_path, ec);
    MOEX_CHECK(!ec, path_, ": cannot move the previous directory aside (", ec.message(), ")");
  }
  fs::rename(temp_path_, path_, ec);
  if (ec) {
    if (had_previous) {
      std::error_code ignored;
      fs::rename(old_path, path_, ignored);
    }
    MOEX_THROW(path_, ": rename from ", temp_path_, " failed (", ec.message(), ")");
  }
  committed_ = true;
  fsync_parent_directory(path_);
  if (had_previous) fs::remove_all(old_path, ec);
}

}  // namespace moex::io
