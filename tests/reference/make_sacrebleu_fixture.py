#!/usr/bin/env python3
"""Writes tests/fixtures/sacrebleu/fixture.json: sacrebleu's corpus BLEU and chrF (default
settings) on the sets in tests/fixtures/sacrebleu/inputs.json, with the statistics behind them
and sacrebleu's 13a tokenization of every line, for tests/unit/eval_metrics_test.cpp.

    pip install sacrebleu
    python3 tests/reference/make_sacrebleu_fixture.py [--inputs F] [--out F]
"""
import argparse
import json
import os

import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "sacrebleu")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default=os.path.join(FIXTURES, "inputs.json"))
    parser.add_argument("--out", default=os.path.join(FIXTURES, "fixture.json"))
    args = parser.parse_args()
    with open(args.inputs, encoding="utf-8") as f:
        inputs = json.load(f)
    tokenize = Tokenizer13a()
    corpora = []
    for corpus in inputs["corpora"]:
        hyps, refs = corpus["hypotheses"], corpus["references"]
        # corpus_bleu / corpus_chrf with every argument left at its default.
        bleu = sacrebleu.corpus_bleu(hyps, refs)
        chrf = sacrebleu.corpus_chrf(hyps, refs)
        # The metric objects with default arguments give the same scores, and their signatures.
        bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
        assert bleu_metric.corpus_score(hyps, refs).score == bleu.score
        assert chrf_metric.corpus_score(hyps, refs).score == chrf.score
        corpora.append({
            "name": corpus["name"],
            "bleu": bleu.score,
            "bleu_counts": list(bleu.counts),
            "bleu_totals": list(bleu.totals),
            "bleu_precisions": list(bleu.precisions),
            "bleu_bp": bleu.bp,
            "bleu_sys_len": bleu.sys_len,
            "bleu_ref_len": bleu.ref_len,
            "chrf": chrf.score,
            "bleu_signature": str(bleu_metric.get_signature()),
            "chrf_signature": str(chrf_metric.get_signature()),
            # BLEU tokenizes each line after rstrip() (BLEU._preprocess_segment).
            "tokenized_13a": [tokenize(line.rstrip())
                              for line in hyps + [r for stream in refs for r in stream]],
        })
    fixture = {
        "_comment": "Written by tests/reference/make_sacrebleu_fixture.py from inputs.json; "
                    "do not edit by hand.",
        "sacrebleu_version": sacrebleu.__version__,
        "corpora": corpora,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} (sacrebleu {sacrebleu.__version__}, {len(corpora)} corpora)")


if __name__ == "__main__":
    main()
