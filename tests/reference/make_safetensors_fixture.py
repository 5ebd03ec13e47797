# Writes tests/fixtures/io/torch_all_dtypes.safetensors with the reference implementation
# (safetensors.torch.save_file), which tests/unit/io_safetensors_test.cpp reads.
# Run where torch and safetensors are installed: OUT=tests/fixtures/io python3 this_file.py
import os

import torch
from safetensors.torch import save_file

save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4,
           "b": torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),
           "h": torch.tensor([0.5, -1.0], dtype=torch.float16),
           "m": torch.tensor([True, False, True]),
           "i": torch.tensor([-5, 1 << 40], dtype=torch.int64),
           "s": torch.tensor(7, dtype=torch.int32),
           "d": torch.tensor([1 / 3], dtype=torch.float64),
           "u": torch.tensor([255, 0], dtype=torch.uint8)},
          os.path.join(os.environ["OUT"], "torch_all_dtypes.safetensors"), metadata={"format": "pt"})
