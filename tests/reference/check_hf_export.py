# Loads moex's exports (save_hf_model, written by infer_hf_parity_test with MOEX_HF_EXPORT_DIR=DIR)
# with transformers and compares their logits with the fixtures' (tests/fixtures/hf/<arch>/).
#   python3 check_hf_export.py DIR
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

root = sys.argv[1]
fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")
ok = True
for arch in sorted(os.listdir(root)):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(root, arch), dtype=torch.float32, attn_implementation="eager").eval()
    fx = load_file(os.path.join(fixtures, arch, "fixture.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=fx["input_ids"].long()).logits
    err = float((logits - fx["logits"]).norm() / fx["logits"].norm())
    print(arch, type(model).__name__, "logits rel L2 vs fixture:", err, flush=True)
    ok &= err < 1e-5
print("ALL OK" if ok else "MISMATCH")
