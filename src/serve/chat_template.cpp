#include "serve/chat_template.h"

#include <filesystem>

#include "core/file_util.h"
#include "core/json_reader.h"
#include "serve/jinja_ast.h"
#include "serve/jinja_builtins.h"
#include "serve/jinja_evaluator.h"
#include "serve/jinja_lexer.h"
#include "serve/jinja_parser.h"
#include "serve/jinja_scope.h"

namespace moex::serve {

const char* const kDefaultChatTemplate =
    "{#- moex default chat template: <|role|> line, message, newline; eos_token ends assistant turns -#}\n"
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "    {{- '<|' + message['role'] + '|>\\n' + message['content'] -}}\n"
    "    {%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}\n"
    "    {{- '\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n";

ChatTemplate ChatTemplate::parse(const std::string& text, const std::string& source) {
  const jinja::SourceLocator locator(source, text);
  auto program = std::make_shared<jinja::Program>(jinja::parse(jinja::tokenize(text, locator), locator, text.size()));
  ChatTemplate result;
  result.program_ = std::move(program);
  result.source_ = source;
  result.text_ = text;
  return result;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt,
                                 const std::map<std::string, std::string>& special_tokens,
                                 const nlohmann::ordered_json& tools,
                                 const nlohmann::ordered_json& extra) const {
  nlohmann::ordered_json variables =
      extra.is_object() ? extra : nlohmann::ordered_json::object();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ChatMessage& message : messages) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    m["role"] = message.role;
    m["content"] = message.content;
    if (message.extra.is_object()) {
      for (auto it = message.extra.begin(); it != message.extra.end(); ++it) m[it.key()] = it.value();
    }
    list.push_back(std::move(m));
  }
  variables["messages"] = std::move(list);
  variables["add_generation_prompt"] = add_generation_prompt;
  if (tools.is_array() && !tools.empty()) variables["tools"] = tools;
  for (const auto& token : special_tokens) variables[token.first] = token.second;
  return render_json(variables);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& variables) const {
  MOEX_CHECK(program_ != nullptr, "chat template rendered before it was parsed");
  MOEX_CHECK(variables.is_object(), source_, ": chat template variables must be a JSON object");
  jinja::Scope globals;
  jinja::install_globals(globals);
  for (auto it = variables.begin(); it != variables.end(); ++it) {
    globals.set(it.key(), jinja::Value::from_json(it.value()));
  }
  try {
    return jinja::render_program(*program_, globals);
  } catch (const jinja::RenderError& e) {
    const jinja::SourceLocator locator(source_, text_);
    const std::string where = e.located ? locator.where(e.offset) : source_;
    if (e.raised) {
      const std::string message = where + ": raise_exception: " + e.what();
      throw ChatTemplateRaised(message, e.what());
    }
    MOEX_THROW(where, ": ", e.what());
  }
}

namespace {

nlohmann::json read_tokenizer_config(const std::filesystem::path& path) {
  const std::string text = read_file(path.string());
  return parse_json(text, path.string());
}

}  // namespace

ChatTemplate load_chat_template(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::filesystem::path jinja_file = dir / "chat_template.jinja";
  if (std::filesystem::is_regular_file(jinja_file))
    return ChatTemplate::parse(read_file(jinja_file.string()), jinja_file.string());

  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config_path)) {
    return ChatTemplate::parse(kDefaultChatTemplate, "moex default chat template");
  }
  const nlohmann::json config = read_tokenizer_config(config_path);
  const std::string source = config_path.string() + ": chat_template";
  if (!config.is_object() || !config.contains("chat_template") || config["chat_template"].is_null()) {
    return ChatTemplate::parse(kDefaultChatTemplate, "moex default chat template");
  }
  const nlohmann::json& chat_template = config["chat_template"];
  if (chat_template.is_string()) return ChatTemplate::parse(chat_template.get<std::string>(), source);
  MOEX_CHECK(chat_template.is_array(), source, " must be a string or a list of {\"name\", \"template\"}");
  std::string names;
  for (const nlohmann::json& entry : chat_template) {
    MOEX_CHECK(entry.is_object() && entry.contains("name") && entry["name"].is_string() && entry.contains("template") &&
                   entry["template"].is_string(),
               source, " entries must be {\"name\": string, \"template\": string}");
    const std::string name = entry["name"].get<std::string>();
    if (name == "default") return ChatTemplate::parse(entry["template"].get<std::string>(), source + "[default]");
    names += (names.empty() ? "" : ", ") + name;
  }
  MOEX_THROW(source, " has no template named \"default\" (it has: ", names.empty() ? "none" : names, ")");
}

std::map<std::string, std::string> load_special_tokens(const std::string& model_dir) {
  std::map<std::string, std::string> tokens;
  const std::filesystem::path config_path = std::filesystem::path(model_dir) / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config_path)) return tokens;
  const nlohmann::json config = read_tokenizer_config(config_path);
  if (!config.is_object()) return tokens;
  for (const char* name : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (!config.contains(name)) continue;
    const nlohmann::json& token = config[name];
    if (token.is_string()) {
      tokens[name] = token.get<std::string>();
    } else if (token.is_object() && token.contains("content") && token["content"].is_string()) {
      tokens[name] = token["content"].get<std::string>();
    }
  }
  return tokens;
}

}  // namespace moex::serve
