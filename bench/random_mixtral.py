#!/usr/bin/env python3
"""Writes a Hugging Face Mixtral directory with random bf16 weights and a byte-level BPE trained on
this repository's docs, for serving benchmarks on a machine without a downloaded model (not a
test; needs torch, transformers and tokenizers).

  python3 bench/random_mixtral.py OUT_DIR [--hidden 2048] [--layers 8] [--ffn 5632]

The vocabulary is the tokenizer's (about 4000 tokens), so every generated id has text.
"""
import argparse
import glob
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MixtralConfig, MixtralForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=4000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(glob.glob(os.path.join(root, "docs", "*.md")) + [os.path.join(root, "README.md")],
              trainer)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        f.write('{"bos_token": "<s>", "eos_token": "</s>", '
                '"tokenizer_class": "PreTrainedTokenizerFast"}\n')
    config = MixtralConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden,
                           intermediate_size=args.ffn, num_hidden_layers=args.layers,
                           num_attention_heads=16, num_key_value_heads=8, num_local_experts=8,
                           num_experts_per_tok=2, max_position_embeddings=4096, bos_token_id=0,
                           eos_token_id=1)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = MixtralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(f'{{"out": "{args.out}", "vocab": {tok.get_vocab_size()}, "parameters": {params}}}')


if __name__ == "__main__":
    main()
