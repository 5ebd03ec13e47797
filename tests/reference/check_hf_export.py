# Loads moex's exports with transformers and checks them against moex.
#
#   python3 check_hf_export.py DIR
#     DIR/<arch>/ are the exports of the HF fixtures (save_hf_model, written by
#     infer_hf_parity_test with MOEX_HF_EXPORT_DIR=DIR); their logits are compared with the
#     fixtures' (tests/fixtures/hf/<arch>/).
#
#   python3 check_hf_export.py --trained KEEP
#     KEEP is what tests/cli/working_path_test.sh MOEX KEEP leaves: KEEP/export (`moex export` of
#     a model moex trained, with its SentencePiece tokenizer) and KEEP/reference.json (moex's
#     token ids and decoded text for a few strings, eval ids and moex's logits of the export).
#     Checks that AutoTokenizer and AutoModelForCausalLM load KEEP/export as it is, that the
#     tokenizer's ids and decoded text equal moex's, that the logits equal moex's, and that
#     generation_config.json's eos is the tokenizer's.
#
# Prints one line per check and "ALL OK" or "MISMATCH" last; the exit status is 0 only for ALL OK.
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def check_fixture_exports(root):
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")
    ok = True
    for arch in sorted(os.listdir(root)):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.join(root, arch), dtype=torch.float32, attn_implementation="eager").eval()
        fx = load_file(os.path.join(fixtures, arch, "fixture.safetensors"))
        with torch.no_grad():
            logits = model(input_ids=fx["input_ids"].long()).logits
        err = rel_l2(logits, fx["logits"])
        print(arch, type(model).__name__, "logits rel L2 vs fixture:", err, flush=True)
        ok &= err < 1e-5
    return ok


def check_trained_export(keep):
    export = os.path.join(keep, "export")
    ref = json.load(open(os.path.join(keep, "reference.json")))
    ok = True

    def report(good, *what):
        nonlocal ok
        ok &= bool(good)
        print("ok  " if good else "FAIL", *what, flush=True)

    tok = transformers.AutoTokenizer.from_pretrained(export)
    report(True, "AutoTokenizer loaded", type(tok).__name__, "vocab", len(tok))
    for text, want in ref["tokenize"].items():
        got = tok(text)["input_ids"]
        report(got == want, "ids of", repr(text), "" if got == want else f"hf {got} moex {want}")
        decoded = tok.decode(got, skip_special_tokens=True)
        want_text = ref["decode"][text]
        report(decoded == want_text, "decode of", repr(text),
               "" if decoded == want_text else f"hf {decoded!r} moex {want_text!r}")

    gen = transformers.GenerationConfig.from_pretrained(export)
    report(gen.eos_token_id == tok.eos_token_id and tok.eos_token_id is not None,
           "generation_config eos", gen.eos_token_id, "tokenizer eos", tok.eos_token_id)
    report(gen.bos_token_id == tok.bos_token_id, "generation_config bos", gen.bos_token_id,
           "tokenizer bos", tok.bos_token_id)

    model = transformers.AutoModelForCausalLM.from_pretrained(
        export, dtype=torch.float32, attn_implementation="eager").eval()
    report(True, "AutoModelForCausalLM loaded", type(model).__name__)
    report(model.generation_config.eos_token_id == tok.eos_token_id,
           "model.generation_config eos", model.generation_config.eos_token_id)
    ids = load_file(os.path.join(keep, ref["eval_ids"]))["input_ids"].long()
    want = load_file(os.path.join(keep, ref["logits"]))["logits"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    err = rel_l2(logits, want)
    report(err < 1e-5, "logits rel L2 vs moex eval of the export:", err)
    return ok


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--trained":
        all_ok = check_trained_export(sys.argv[2])
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        all_ok = check_fixture_exports(sys.argv[1])
    else:
        sys.exit("usage: check_hf_export.py DIR | --trained KEEP")
    print("ALL OK" if all_ok else "MISMATCH")
    sys.exit(0 if all_ok else 1)
