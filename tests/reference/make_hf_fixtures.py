# Writes tests/fixtures/hf/<arch>/ for tests/unit/infer_hf_parity_test.cpp: tiny random models of
# the Hugging Face MoE architectures moex imports (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE), saved
# with save_pretrained, plus what transformers computes with them in fp32 on the CPU:
#   model/                 config.json + safetensors as save_pretrained writes them
#   fixture.safetensors    input_ids [2,12] (i32), logits [2,12,V] (f32), loss, aux_loss,
#                          layer_aux [L_moe] (HF's load-balancing loss of each MoE layer alone),
#                          greedy [2,12+16] (i32, a plain argmax loop without cache) and
#                          greedy_generate (model.generate, KV cache) when it ran
#   grads.safetensors      (Mixtral) d(LM loss)/d(param) of every parameter, named as
#                          named_parameters() names them
#   meta.json              versions, saved tensor names/shapes/dtypes, parameter names/shapes
# Run on a machine with transformers 5.x and torch:  OUT=dir python3 make_hf_fixtures.py
import json
import os
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

torch.set_default_dtype(torch.float32)
OUT = os.environ.get("OUT", "tests/fixtures/hf")
VOCAB, HIDDEN, BATCH, SEQ, NEW = 128, 64, 2, 12, 16


def specs():
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.1,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, router_aux_loss_coef=0.02)
    return [
        # Mixtral: every layer MoE, always renormalized top-2, weights saved as fp32.
        ("mixtral", transformers.MixtralConfig(
            **common, num_hidden_layers=2, intermediate_size=48, num_local_experts=4,
            num_experts_per_tok=2, rope_theta=10000.0, sliding_window=None,
            tie_word_embeddings=False), {}),
        # Qwen2-MoE: qkv bias, a dense layer (mlp_only_layers), a sigmoid-gated shared expert,
        # norm_topk_prob False, sharded checkpoint.
        ("qwen2_moe", transformers.Qwen2MoeConfig(
            **common, num_hidden_layers=3, intermediate_size=80, moe_intermediate_size=32,
            shared_expert_intermediate_size=56, num_experts=6, num_experts_per_tok=2,
            decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=False, rope_theta=1000000.0,
            use_sliding_window=False, tie_word_embeddings=False), {"max_shard_size": "150KB"}),
        # Qwen3-MoE: per-head q/k RMSNorm, head_dim != hidden/heads, norm_topk_prob True, tied
        # embeddings, weights saved as bf16 (values rounded to bf16 before the reference runs).
        ("qwen3_moe", transformers.Qwen3MoeConfig(
            **common, num_hidden_layers=2, head_dim=24, intermediate_size=80,
            moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1,
            mlp_only_layers=[], norm_topk_prob=True, rope_theta=10000.0, use_sliding_window=False,
            tie_word_embeddings=True), {"bf16": True}),
        # OLMoE: q/k RMSNorm over the whole projection, top-2 of 8, norm_topk_prob False.
        ("olmoe", transformers.OlmoeConfig(
            **common, num_hidden_layers=2, intermediate_size=32, num_experts=8,
            num_experts_per_tok=2, norm_topk_prob=False, rope_theta=10000.0, clip_qkv=None,
            tie_word_embeddings=False), {}),
    ]


def lb_loss_fn(model):
    mod = sys.modules[type(model).__module__]
    return getattr(mod, "load_balancing_loss_func")


def main():
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    os.makedirs(OUT, exist_ok=True)
    for idx, (arch, config, opts) in enumerate(specs()):
        torch.manual_seed(1234 + idx)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        model = model.float().eval()
        with torch.no_grad():  # non-trivial norms and biases, so loading them is tested
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif name.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                if opts.get("bf16"):
                    p.copy_(p.bfloat16().float())
        gen = torch.Generator().manual_seed(99 + idx)
        ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=gen)
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids, output_router_logits=True)
            logits, loss = out.logits.float(), out.loss.float()
            aux = out.aux_loss.float() if getattr(out, "aux_loss", None) is not None else torch.tensor(0.0)
            lm_loss = model(input_ids=ids, labels=ids, output_router_logits=False).loss.float()
            k = config.num_experts_per_tok
            e = getattr(config, "num_local_experts", None) or config.num_experts
            layer_aux = torch.stack([lb_loss_fn(model)((rl,), e, k, None).float()
                                     for rl in out.router_logits if rl is not None])
            seq = ids.clone()
            for _ in range(NEW):
                nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
            last = model(input_ids=seq).logits[:, SEQ - 1:-1].float()
            top2 = last.topk(2, dim=-1).values
            min_margin = float((top2[..., 0] - top2[..., 1]).min())
        tensors = {"input_ids": ids.int(), "logits": logits.contiguous(), "loss": lm_loss.reshape(1),
                   "loss_with_aux": loss.reshape(1), "aux_loss": aux.reshape(1),
                   "layer_aux": layer_aux.contiguous(), "greedy": seq.int().contiguous()}
        try:
            model.generation_config.eos_token_id = None
            model.generation_config.pad_token_id = 0
            g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
            tensors["greedy_generate"] = g.int().contiguous()
            print(arch, "generate == manual greedy:", torch.equal(g, seq), flush=True)
        except Exception as ex:  # the manual loop is the reference; generate is a cross-check
            print(arch, "generate failed:", repr(ex), flush=True)
        adir = os.path.join(OUT, arch)
        mdir = os.path.join(adir, "model")
        os.makedirs(mdir, exist_ok=True)
        meta = {"transformers": transformers.__version__, "torch": torch.__version__,
                "architecture": type(model).__name__, "min_greedy_margin": min_margin,
                "params": {n: list(p.shape) for n, p in model.named_parameters()}}
        if arch == "mixtral":  # one training step's gradients of the LM loss (no aux term)
            model.train()
            model.zero_grad()
            tl = model(input_ids=ids, labels=ids, output_router_logits=False).loss
            tl.backward()
            grads = {n: p.grad.detach().float().contiguous() for n, p in model.named_parameters()
                     if p.grad is not None}
            save_file(grads, os.path.join(adir, "grads.safetensors"))
            tensors["train_loss"] = tl.detach().float().reshape(1)
            model.eval()
        save_file(tensors, os.path.join(adir, "fixture.safetensors"))
        save_model = model.to(torch.bfloat16) if opts.get("bf16") else model
        kwargs = {"max_shard_size": opts["max_shard_size"]} if "max_shard_size" in opts else {}
        save_model.save_pretrained(mdir, safe_serialization=True, **kwargs)
        saved = {}
        for f in sorted(os.listdir(mdir)):
            if f.endswith(".safetensors"):
                with safe_open(os.path.join(mdir, f), "pt") as st:
                    for n in st.keys():
                        t = st.get_slice(n)
                        saved[n] = [f, str(t.get_dtype()), list(t.get_shape())]
        meta["saved"] = saved
        with open(os.path.join(adir, "meta.json"), "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
        print(arch, "loss", float(lm_loss), "aux", float(aux), "layer_aux", layer_aux.tolist(),
              "min_margin", min_margin, "files", sorted(os.listdir(mdir)), flush=True)
        print(json.dumps({n: v[1:] for n, v in saved.items() if "layers.0." in n}), flush=True)
        print(open(os.path.join(mdir, "config.json")).read(), flush=True)


if __name__ == "__main__":
    main()
