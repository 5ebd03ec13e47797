// Writes tests/fixtures/chat_templates/expected.json: every template in that folder rendered over a
// set of conversations by @huggingface/jinja 0.5.11 (the JavaScript Jinja that transformers.js
// and the Hub use), which moex's C++ renderer (src/serve/jinja_*.cpp) must match byte for byte.
//
//   mkdir -p /tmp/jinja_oracle && cd /tmp/jinja_oracle && npm init -y && npm install @huggingface/jinja@0.5.11
//   MOEX_NPM_DIR=/tmp/jinja_oracle node tests/reference/chat_templates/make_fixtures.mjs
//
// A render that throws is recorded as {"error": message, "raised": true when the message is a
// raise_exception() text of the template}. The template files and where they come from are listed
// in tests/fixtures/chat_templates/README.md.
import fs from "fs";
import path from "path";
import { createRequire } from "module";
import { fileURLToPath } from "url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
const fixtures = path.join(root, "tests/fixtures/chat_templates");
const npm_dir = process.env.MOEX_NPM_DIR ?? process.cwd();
const require = createRequire(path.join(npm_dir, "package.json"));
const { Template } = await import(require.resolve("@huggingface/jinja"));
const jinja_version = JSON.parse(
  fs.readFileSync(path.join(npm_dir, "node_modules/@huggingface/jinja/package.json"), "utf8"),
).version;

// Special tokens as each model's tokenizer_config.json sets them (Qwen has no bos_token).
const templates = [
  { name: "mixtral_8x7b_instruct_v0_1", tokens: { bos_token: "<s>", eos_token: "</s>" } },
  { name: "qwen1_5_chat", tokens: { eos_token: "<|im_end|>" } },
  { name: "qwen2_5_instruct", tokens: { eos_token: "<|im_end|>" } },
  { name: "qwen3", tokens: { eos_token: "<|im_end|>" } },
  { name: "olmoe_1b_7b_0924_instruct", tokens: { bos_token: "<|endoftext|>", eos_token: "<|endoftext|>" } },
  { name: "moex_default", tokens: { bos_token: "<s>", eos_token: "</s>" } },
];

const weather_tools = [
  {
    type: "function",
    function: {
      name: "get_current_temperature",
      description: 'Get the temperature at a location, e.g. "Paris, France".',
      parameters: {
        type: "object",
        properties: {
          location: { type: "string", description: "City and country" },
          unit: { type: "string", enum: ["celsius", "fahrenheit"] },
        },
        required: ["location"],
      },
    },
  },
];

const tool_call = (name, args) => ({ type: "function", function: { name, arguments: args } });

// Each conversation is rendered with add_generation_prompt false and true, with every template.
const conversations = {
  system_user: {
    messages: [
      { role: "system", content: "You are a helpful assistant." },
      { role: "user", content: "What is a mixture of experts?" },
    ],
  },
  user_only: { messages: [{ role: "user", content: "Hello!" }] },
  multi_turn: {
    messages: [
      { role: "user", content: "Hello, how are you?" },
      { role: "assistant", content: "I'm doing great. How can I help you today?" },
      { role: "user", content: "I'd like to show off how chat templating works!" },
    ],
  },
  multi_turn_system: {
    messages: [
      { role: "system", content: "Answer in one sentence." },
      { role: "user", content: "Name a prime." },
      { role: "assistant", content: "7 is prime." },
      { role: "user", content: "Another one?" },
      { role: "assistant", content: "11." },
    ],
  },
  ends_with_assistant: {
    messages: [
      { role: "user", content: "2+2?" },
      { role: "assistant", content: "4" },
    ],
  },
  special_characters: {
    messages: [
      {
        role: "user",
        content:
          "Quotes ' and \" and `back`, a backslash \\ and \\n (not a newline),\nreal newlines\n\n\ttabs, " +
          "{{ not_a_tag }} {% raw %} {# no comment #}, unicode: café, naïve, 中文, Ελληνικά, עברית, emoji 😀🚀, " +
          "zero-width\u200bjoiner, nbsp\u00a0here",
      },
      { role: "assistant", content: "  leading and trailing spaces  \n" },
      { role: "user", content: "<|im_start|> and [INST] inside content [/INST] </s>" },
    ],
  },
  empty_content: {
    messages: [
      { role: "user", content: "" },
      { role: "assistant", content: "" },
      { role: "user", content: " " },
    ],
  },
  roles_not_alternating: {
    messages: [
      { role: "user", content: "First." },
      { role: "user", content: "Second, without an answer in between." },
    ],
  },
  assistant_first: {
    messages: [
      { role: "assistant", content: "I speak first." },
      { role: "user", content: "OK." },
    ],
  },
  thinking_in_content: {
    messages: [
      { role: "user", content: "Is 91 prime?" },
      { role: "assistant", content: "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 = 7 × 13." },
      { role: "user", content: "And 97?" },
    ],
  },
  reasoning_content_field: {
    messages: [
      { role: "user", content: "Is 97 prime?" },
      { role: "assistant", content: "Yes.", reasoning_content: "Not divisible by 2, 3, 5 or 7." },
    ],
  },
  thinking_disabled: {
    messages: [{ role: "user", content: "Quick answer: capital of France?" }],
    enable_thinking: false,
  },
  thinking_enabled: {
    messages: [{ role: "user", content: "Think first: capital of Japan?" }],
    enable_thinking: true,
  },
  tool_calls: {
    tools: weather_tools,
    messages: [
      { role: "system", content: "You can look up the weather." },
      { role: "user", content: "How warm is it in Paris and in Oslo?" },
      {
        role: "assistant",
        content: "",
        tool_calls: [
          tool_call("get_current_temperature", { location: "Paris, France", unit: "celsius" }),
          tool_call("get_current_temperature", { location: "Oslo, Norway" }),
        ],
      },
      { role: "tool", content: '{"temperature": 21.5, "unit": "celsius"}' },
      { role: "tool", content: '{"temperature": 9, "unit": "celsius"}' },
      { role: "assistant", content: "Paris is 21.5 °C, Oslo 9 °C." },
      { role: "user", content: "Thanks!" },
    ],
  },
  tool_call_string_arguments: {
    tools: weather_tools,
    messages: [
      { role: "user", content: "Weather in Rome?" },
      {
        role: "assistant",
        content: "Let me check.",
        tool_calls: [{ type: "function", function: { name: "get_current_temperature", arguments: '{"location": "Rome"}' } }],
      },
      { role: "tool", content: "<tool_response>18</tool_response>" },
    ],
  },
  tool_call_null_content: {
    messages: [
      { role: "user", content: "Weather in Rome?" },
      { role: "assistant", content: null, tool_calls: [tool_call("get_current_temperature", { location: "Rome" })] },
    ],
  },
};

const result = { generator: `@huggingface/jinja ${jinja_version}`, templates: [] };
let count = 0;
for (const { name, tokens } of templates) {
  const file = `${name}.jinja`;
  const text = fs.readFileSync(path.join(fixtures, file), "utf8");
  const template = new Template(text);
  const cases = [];
  for (const [conversation, variables] of Object.entries(conversations)) {
    for (const add_generation_prompt of [false, true]) {
      const input = { ...variables, add_generation_prompt, ...tokens };
      const entry = { conversation, variables: input };
      try {
        entry.output = template.render(structuredClone(input));
      } catch (error) {
        entry.error = error.message;
        entry.raised = text.includes(`'${error.message}'`) || text.includes(`"${error.message}"`);
      }
      cases.push(entry);
      ++count;
    }
  }
  result.templates.push({ name, file, cases });
}
fs.writeFileSync(path.join(fixtures, "expected.json"), JSON.stringify(result, null, 1) + "\n");
console.log(`wrote ${count} renders of ${templates.length} templates to tests/fixtures/chat_templates/expected.json`);
