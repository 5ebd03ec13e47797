"""Building a transformers model for the peer scripts: on the GPU in bf16 directly (a CPU fp32
init of the larger shapes takes minutes)."""
import torch


def build_bf16_on_gpu(model_cls, config, seed=0):
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return model_cls(config)
    finally:
        torch.set_default_dtype(previous)
