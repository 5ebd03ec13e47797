// A one-value store in a shared file, for bootstrapping a group of processes without MPI
// (docs/parallelism.md §Launch): one writer publishes a small binary value, the readers poll for
// it. The writer writes a temporary file and renames it into place, so a reader sees either no
// file or the whole value; a file that is there but fails the format check is an error at once.
#pragma once

#include <cstddef>
#include <string>

namespace moex::dist {

// Publishes `n` bytes at `path` (magic, length, bytes, checksum), replacing any older file.
// `what` names the value in errors (e.g. "the NCCL unique id").
void file_store_write(const std::string& path, const void* data, size_t n, const char* what);

// Waits up to `timeout_s` seconds for `path` to appear, then reads exactly `n` bytes into `data`.
// Throws moex::Error naming the path and `what` when the wait runs out or the file is not a store
// file of `n` bytes (wrong magic, length or checksum).
void file_store_read(const std::string& path, void* data, size_t n, double timeout_s,
                     const char* what);

}  // namespace moex::dist
