#include "model_dir.h"

#include "io/safetensors.h"

namespace moex::cli {

Tensor read_input_ids(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  MOEX_CHECK(file.contains("input_ids"), path, ": no tensor 'input_ids'");
  Tensor ids = file.copy("input_ids");
  MOEX_CHECK(ids.dtype() == DType::kI32 && ids.ndim() == 2 && ids.dim(1) > 0, path,
             ": input_ids must be int32 [B, T] with T > 0, got ", dtype_name(ids.dtype()), " ",
             ids.shape().str());
  return ids;
}

}  // namespace moex::cli
