#include "serve/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/logging.h"
#include "data/unicode.h"
#include "infer/model_tokenizer.h"
#include "model/model_io.h"
#include "serve/chat_segments.h"
#include "serve/chat_template.h"
#include "serve/client_connection.h"
#include "serve/openai_api.h"
#include "serve/stop_text.h"
#include "serve/tool_calls.h"

namespace moex::serve {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How often a handler waiting for tokens looks whether its client is still there.
constexpr std::chrono::milliseconds kClientCheck{50};

// What the engine thread hands one HTTP handler for one choice of its request: tokens as they
// come, then the end.
struct Feed {
  std::deque<int32_t> tokens;
  // Log-probabilities, when asked for: the prompt's (expected_prompt_logprobs of them, which come
  // first), then one per token in `tokens`, in step with it.
  int64_t expected_prompt_logprobs = 0;
  std::vector<infer::TokenLogprob> prompt_logprobs;
  std::deque<infer::TokenLogprob> logprobs;
  bool finished = false;
  infer::FinishReason reason = infer::FinishReason::kError;
  std::string error;
  bool cancelled = false;     // the handler is done with it: the engine cancels at its next token
  int64_t cached_tokens = 0;  // prompt tokens the prefix cache held (set when admitted)
};

// Every choice's feed behind one lock, so that a handler waits for news from any of them.
struct Channel {
  std::mutex mutex;
  std::condition_variable ready;
  std::vector<Feed> feeds;
};

// What a handler keeps of one choice while it turns tokens into text.
struct ChoiceState {
  uint64_t engine_id = 0;
  std::unique_ptr<StopText> text;
  std::string echo;  // the prompt's text, sent first (completions with echo)
  int64_t completion_tokens = 0;
  // With log-probabilities: one entry per counted completion token (after the prompt's, with
  // echo), and how many of them went out in chunks (streaming).
  std::vector<LogprobEntry> logprobs;
  size_t logprobs_sent = 0;
  int64_t logprob_offset = 0;  // text_offset of the next entry: the token texts before it
  // The last token that adds text, which the next one's text is read after (the prompt's last
  // such at first; -1: none). Special tokens add none (text_anchor).
  int32_t last_token = -1;
  // With tools offered (streaming): the text so far, and how much of it went out as content.
  std::string tool_text;
  size_t tool_sent = 0;
  bool started = false;       // a chunk of it was sent (streaming)
  bool text_done = false;     // its last text was taken (stop string or the engine's end)
  bool finish_sent = false;   // its finish chunk was sent (streaming)
  bool ended = false;         // text done and the engine finished with it
  std::string finish_reason;  // "stop" or "length"; "error" when the engine failed it
  std::string error;
};

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Invalid UTF-8 echoed from a request (an error message quoting it) is replaced, not thrown on.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.to_json());
}

// Ends a stream with an error object, which OpenAI's clients raise, then [DONE]. False when the
// client is gone.
bool end_stream_with_error(httplib::DataSink& sink, const ApiError& e, bool* done) {
  const std::string text =
      "data: " + e.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
      "\n\ndata: [DONE]\n\n";
  if (!sink.is_writable() || !sink.write(text.data(), text.size())) return false;
  sink.done();
  *done = true;
  return true;
}

ApiError api_error(int status, const std::string& message, const std::string& type,
                   const std::string& code = "", const std::string& param = "") {
  ApiError e;
  e.status = status;
  e.message = message;
  e.type = type;
  e.code = code;
  e.param = param;
  return e;
}

}  // namespace

constexpr int64_t kMaxHttpThreads = 2048;

struct Server::Impl {
  ServerOptions options;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::unique_ptr<ChatTemplate> chat_template;
  ToolCallFormat tool_format = ToolCallFormat::kNone;  // how the template's model writes calls
  std::once_flag json_tokens_once;
  std::shared_ptr<const infer::TokenTable> json_tokens;  // json_token_table()
  std::map<std::string, std::string> special_tokens;
  // The most text bytes one token can stand for (the longest token's text, a normalization's
  // growth allowed for): text longer than the context times this cannot fit, so it is refused
  // before tokenizing, which costs memory in proportion to the text.
  int64_t max_token_text = 0;
  std::unique_ptr<infer::Scheduler> scheduler;
  httplib::Server http;
  // Each routed path and the methods it answers (the Allow header of a 405), filled by get/post.
  std::map<std::string, std::string> allowed_methods;
  std::thread engine, drainer;
  std::atomic<bool> engine_started{false}, engine_done{false};
  int bound_port = -1;

  std::atomic<bool> shutting_down{false};
  std::mutex shutdown_mutex;
  std::atomic<int64_t> active{0};  // generation handlers in flight
  std::atomic<int64_t> requests{0}, request_errors{0}, disconnects{0};
  std::atomic<uint64_t> next_seed{0x5eed};
  std::atomic<uint64_t> next_id{1};
  Clock::time_point started = Clock::now();

  explicit Impl(const ServerOptions& o) : options(o) {
    if (options.model_name.empty())
      options.model_name = std::filesystem::path(options.model_dir).filename().string();
    if (options.model_name.empty()) options.model_name = "moex";
    model = model::load_model(options.model_dir, options.device, options.tp);
    tokenizer = infer::open_model_tokenizer(options.model_dir, model->config().vocab_size);
    MOEX_CHECK(tokenizer != nullptr, options.model_dir,
               ": no tokenizer (tokenizer.json or *.model) to serve text with");
    const ChatRenderer renderer(options.model_dir, *tokenizer);
    chat_template = std::make_unique<ChatTemplate>(renderer.chat_template);
    tool_format = tool_call_format(chat_template->text());
    special_tokens = renderer.special_tokens;
    for (int32_t id = 0; id < tokenizer->vocab_size(); ++id) {
      try {
        max_token_text = std::max<int64_t>(max_token_text,
                                           static_cast<int64_t>(tokenizer->id_to_token(id).size()));
      } catch (const Error&) {  // an id the vocabulary skips
      }
    }
    max_token_text = 4 * std::max<int64_t>(max_token_text, 1);
    scheduler = std::make_unique<infer::Scheduler>(*model, options.scheduler);
    routes();
  }

  // Refuses text (a prompt, a rendered conversation) too long for the context at any
  // tokenization, before tokenizing it.
  void check_text_fits(size_t bytes, const std::string& param) const {
    const int64_t context = scheduler->max_context();
    if (static_cast<int64_t>(bytes) / max_token_text < context) return;
    throw api_error(400,
                    "this model's maximum context length is " + std::to_string(context) +
                        " tokens; the " + (param == "messages" ? "conversation" : "prompt") +
                        " has " + std::to_string(bytes) +
                        " bytes of text, more than that many tokens can hold",
                    "invalid_request_error", "context_length_exceeded", param);
  }

  // Each choice's prompt (prompt index * n + j), or an ApiError.
  std::vector<std::vector<int32_t>> choice_prompts(const GenerationRequest& r) {
    std::vector<std::vector<int32_t>> prompts;
    if (r.chat) prompts.push_back(chat_prompt(r));
    for (const Prompt& p : r.prompts) {
      if (p.text) check_text_fits(p.text->size(), "prompt");
      prompts.push_back(p.text ? tokenizer->encode(*p.text, true) : p.ids);  // ids: checked below
    }

    // Token ids the request names (the parser checked they are >= 0).
    const int64_t vocab = model->config().vocab_size;
    auto in_vocabulary = [&](int32_t token, const char* param) {
      if (token >= vocab)
        throw api_error(400,
                        std::string("'") + param + "' token " + std::to_string(token) +
                            " is outside the vocabulary of " + std::to_string(vocab),
                        "invalid_request_error", "", param);
    };
    for (int32_t token : r.stop_token_ids) in_vocabulary(token, "stop_token_ids");
    for (const auto& [token, bias] : r.logit_bias) in_vocabulary(token, "logit_bias");
    const std::string prompt_param = r.chat ? "messages" : "prompt";
    for (const Prompt& p : r.prompts)
      if (!p.text)
        for (int32_t token : p.ids) in_vocabulary(token, prompt_param.c_str());
    const int64_t context = scheduler->max_context();
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t len = static_cast<int64_t>(prompts[i].size());
      const std::string which = prompts.size() > 1 ? " (prompt " + std::to_string(i) + ")" : "";
      if (len == 0)
        throw api_error(400, "the prompt is empty" + which, "invalid_request_error", "",
                        prompt_param);
      if (len >= context)
        throw api_error(400,
                        "this model's maximum context length is " + std::to_string(context) +
                            " tokens; the prompt" + which + " has " + std::to_string(len),
                        "invalid_request_error", "context_length_exceeded", prompt_param);
      if (r.max_tokens && *r.max_tokens > context - len)  // (len + max_tokens could overflow)
        throw api_error(400,
                        "this model's maximum context length is " + std::to_string(context) +
                            " tokens; the request has " + std::to_string(len) + " prompt tokens" +
                            which + " and asks for " + std::to_string(*r.max_tokens) + " more",
                        "invalid_request_error", "context_length_exceeded", r.max_tokens_field);
    }
    std::vector<std::vector<int32_t>> choices;
    for (const auto& p : prompts)
      for (int64_t j = 0; j < r.n; ++j) choices.push_back(p);
    return choices;
  }

  std::vector<int32_t> chat_prompt(const GenerationRequest& r) {
    if (!r.tools.empty() && tool_format == ToolCallFormat::kNone)
      throw api_error(400,
                      "'tools': the chat template of '" + options.model_name +
                          "' does not teach tool calls in a form moex reads (Hermes "
                          "<tool_call> blocks, as Qwen2.5 and Qwen3 templates do)",
                      "invalid_request_error", "", "tools");
    std::string text;
    try {
      text = chat_template->render(r.messages, true, special_tokens, r.tools, r.template_kwargs);
    } catch (const ChatTemplateRaised& e) {
      throw api_error(400, "the model's chat template refused the conversation: " + e.reason(),
                      "invalid_request_error", "", "messages");
    }
    check_text_fits(text.size(), "messages");
    return tokenizer->encode(text, /*add_special_tokens=*/false);  // the template adds BOS
  }

  // Cancels the choices the handler is done with (all when `which` < 0) in the engine.
  void cancel(Channel& channel, const std::vector<ChoiceState>& choices, int64_t which) {
    std::vector<uint64_t> ids;
    {
      std::lock_guard<std::mutex> lock(channel.mutex);
      for (size_t i = 0; i < choices.size(); ++i) {
        if (which >= 0 && static_cast<int64_t>(i) != which) continue;
        if (channel.feeds[i].finished || channel.feeds[i].cancelled) continue;
        channel.feeds[i].cancelled = true;
        if (choices[i].engine_id != 0) ids.push_back(choices[i].engine_id);
      }
    }
    for (uint64_t id : ids) scheduler->cancel(id);
  }

  // Waits until some choice not yet ended has tokens or has finished, then turns every choice's
  // new tokens into text: pieces[i] is what choice i may send now. A choice's text is done when
  // its stop string appears (it is then cancelled in the engine, and tokens still on their way
  // are not counted) or when the engine finishes it; the choice has ended once the engine has
  // finished it too, so no request outlives its response.
  // Waits at most kClientCheck for news; returns false (pieces all empty) when none came, so the
  // handler can look whether its client is still there.
  bool advance(Channel& channel, std::vector<ChoiceState>& choices,
               std::vector<std::string>& pieces) {
    std::vector<std::vector<int32_t>> got(choices.size());
    std::vector<std::vector<infer::TokenLogprob>> got_logprobs(choices.size());
    std::vector<Feed> ends(choices.size());  // each feed's end (finished, reason, error)
    pieces.assign(choices.size(), std::string());
    {
      std::unique_lock<std::mutex> lock(channel.mutex);
      const bool news = channel.ready.wait_for(lock, kClientCheck, [&] {
        for (size_t i = 0; i < choices.size(); ++i)
          if (!choices[i].ended && (!channel.feeds[i].tokens.empty() || channel.feeds[i].finished))
            return true;
        return false;
      });
      if (!news) return false;
      for (size_t i = 0; i < choices.size(); ++i) {
        Feed& f = channel.feeds[i];
        got[i].assign(f.tokens.begin(), f.tokens.end());
        f.tokens.clear();
        // A token's log-probability arrives just before the token, in its own lock section:
        // take one per token taken, and leave a next token's for the next call.
        const size_t paired = std::min(f.logprobs.size(), got[i].size());
        got_logprobs[i].assign(f.logprobs.begin(), f.logprobs.begin() + paired);
        f.logprobs.erase(f.logprobs.begin(), f.logprobs.begin() + paired);
        ends[i].finished = f.finished;
        ends[i].reason = f.reason;
        ends[i].error = f.error;
      }
    }
    for (size_t i = 0; i < choices.size(); ++i) {
      ChoiceState& c = choices[i];
      if (c.ended) continue;
      if (!c.text_done) {
        for (size_t k = 0; k < got[i].size(); ++k) {
          ++c.completion_tokens;
          if (k < got_logprobs[i].size())
            c.logprobs.push_back(entry(c.last_token, got_logprobs[i][k]));
          c.last_token = text_anchor(c.last_token, got[i][k]);
          pieces[i] += c.text->push(got[i][k]);
          if (c.text->stopped()) break;
        }
        if (c.text->stopped()) {
          cancel(channel, choices, static_cast<int64_t>(i));
          c.finish_reason = "stop";
        } else if (ends[i].finished) {
          const infer::FinishReason reason = ends[i].reason;
          c.finish_reason = reason == infer::FinishReason::kError    ? "error"
                            : reason == infer::FinishReason::kLength ? "length"
                                                                     : "stop";
          c.error = ends[i].error;
        }
        if (c.text->stopped() || ends[i].finished) {
          pieces[i] += c.text->finish();
          c.text_done = true;
        }
      }
      c.ended = ends[i].finished;
    }
    return true;
  }

  // The bytes token t adds after token `prev` (-1: at the start): what decoding both adds to
  // decoding prev alone (t alone where that is no prefix). Tokens do not decode alone: a
  // SentencePiece "▁the" loses its space at the start of a decode (infer/text_stream.h). Raw
  // bytes, so a token holding part of a UTF-8 character gives that part (the logprobs' "bytes").
  std::string token_bytes(int32_t prev, int32_t t) {
    // Rows of a vocabulary padded past the tokenizer's have no text.
    const int64_t known = tokenizer->vocab_size();
    if (t < 0 || t >= known) return "";
    if (prev < 0 || prev >= known) return tokenizer->decode_bytes({t});
    const std::string before = tokenizer->decode_bytes({prev});
    const std::string both = tokenizer->decode_bytes({prev, t});
    if (both.compare(0, before.size(), before) == 0) return both.substr(before.size());
    return tokenizer->decode_bytes({t});
  }
  // What the next token's text is read after once token t follows `anchor`: t, unless it is a
  // special token, which adds no text (the choice's text skips them), so a "▁word" after a
  // control token mid-answer keeps its space as the text does.
  int32_t text_anchor(int32_t anchor, int32_t t) const {
    return tokenizer->is_special(t) ? anchor : t;
  }
  // The same as text: part of a character reads U+FFFD. Per token from the bytes, so the tokens'
  // texts add up to the choice's text (a decode of a run of spaces drops some; its bytes do not).
  std::string token_text(int32_t prev, int32_t t) {
    return data::utf8_sanitize(token_bytes(prev, t));
  }

  // What each token adds to a text, for requests held to a format: its text after an ordinary token
  // ("" for special tokens and ids past the tokenizer's, which are never drawn there). Built once.
  std::shared_ptr<const infer::TokenTable> json_token_table() {
    std::call_once(json_tokens_once, [this] {
      const int64_t vocab = model->config().vocab_size;
      const std::vector<int32_t> zero = tokenizer->encode("0", /*add_special_tokens=*/false);
      const int32_t anchor = zero.empty() ? -1 : zero.back();
      infer::TokenTexts texts(static_cast<size_t>(vocab));
      for (int64_t v = 0; v < std::min(vocab, tokenizer->vocab_size()); ++v) {
        const auto id = static_cast<int32_t>(v);
        if (!tokenizer->is_special(id)) texts[static_cast<size_t>(v)] = token_text(anchor, id);
      }
      json_tokens = std::make_shared<infer::TokenTable>(std::move(texts));
    });
    return json_tokens;
  }

  // One token's log-probabilities as the API reports them: texts instead of ids, read after the
  // token before it.
  LogprobEntry entry(int32_t prev, const infer::TokenLogprob& lp) {
    LogprobEntry e;
    e.bytes = token_bytes(prev, lp.token);
    e.token = data::utf8_sanitize(e.bytes);
    e.in_text = !tokenizer->is_special(lp.token);
    e.logprob = lp.logprob;
    for (const auto& [token, logprob] : lp.top) {
      std::string bytes = token_bytes(prev, token);
      e.top.push_back({data::utf8_sanitize(bytes), std::move(bytes), logprob});
    }
    return e;
  }

  // An echoed prompt's entries: its first token (no log-probability), then the engine's.
  std::vector<LogprobEntry> prompt_entries(const std::vector<int32_t>& prompt,
                                           const std::vector<infer::TokenLogprob>& logprobs) {
    std::vector<LogprobEntry> out(1);
    out[0].bytes = token_bytes(-1, prompt[0]);
    out[0].token = data::utf8_sanitize(out[0].bytes);
    out[0].in_text = !tokenizer->is_special(prompt[0]);
    int32_t anchor = text_anchor(-1, prompt[0]);
    for (size_t k = 0; k < logprobs.size() && k + 1 < prompt.size(); ++k) {
      out.push_back(entry(anchor, logprobs[k]));
      anchor = text_anchor(anchor, prompt[k + 1]);
    }
    return out;
  }

  // The logprobs object of choice i's entries not sent yet, with the echoed prompt's first when
  // `with_prompt`; null when the request asked for none.
  json take_logprobs(Channel& channel, ChoiceState& c, size_t i, const GenerationRequest& r,
                     const std::vector<int32_t>& prompt, bool with_prompt) {
    if (r.logprobs < 0) return json();
    std::vector<LogprobEntry> entries;
    if (with_prompt && r.echo) {
      std::vector<infer::TokenLogprob> prompt_lps;
      {
        std::lock_guard<std::mutex> lock(channel.mutex);
        prompt_lps = channel.feeds[i].prompt_logprobs;
      }
      entries = prompt_entries(prompt, prompt_lps);
    }
    entries.insert(entries.end(), c.logprobs.begin() + static_cast<int64_t>(c.logprobs_sent),
                   c.logprobs.end());
    c.logprobs_sent = c.logprobs.size();
    json out = logprobs_json(entries, r.chat, c.logprob_offset);
    for (const LogprobEntry& e : entries)
      if (e.in_text) c.logprob_offset += static_cast<int64_t>(e.token.size());
    return out;
  }

  // The id prefix of choice i's tool calls in response `id` ("chatcmpl-7" -> "call_7_0").
  static std::string call_id(const std::string& id, size_t i) {
    return "call_" + id.substr(id.find('-') + 1) + "_" + std::to_string(i);
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    ++requests;
    if (shutting_down) {
      ++request_errors;
      return send_error(res, api_error(503, "the server is shutting down", "server_error"));
    }
    GenerationRequest r;
    std::vector<std::vector<int32_t>> prompts;  // one per choice
    try {
      r = parse_generation_request(req.body, chat);
      if (r.model != options.model_name)
        throw api_error(404,
                        "the model '" + r.model + "' does not exist; this server serves '" +
                            options.model_name + "'",
                        "invalid_request_error", "model_not_found", "model");
      prompts = choice_prompts(r);
    } catch (const ApiError& e) {
      ++request_errors;
      return send_error(res, e);
    } catch (const Error& e) {  // tokenizer or template errors on this request's text
      ++request_errors;
      return send_error(res, api_error(400, e.message(), "invalid_request_error"));
    }
    // Every choice waits as one sequence.
    if (scheduler->stats().waiting + static_cast<int64_t>(prompts.size()) > options.max_waiting) {
      ++request_errors;
      return send_error(res, api_error(429, "too many requests are waiting; retry later",
                                       "rate_limit_exceeded", "rate_limit_exceeded"));
    }

    const int64_t context = scheduler->max_context();
    auto channel = std::make_shared<Channel>();
    channel->feeds.resize(prompts.size());
    auto choices = std::make_shared<std::vector<ChoiceState>>(prompts.size());
    Usage usage;
    // Each choice's text state first (decoding a prompt id the tokenizer lacks is the client's
    // error, a 400), so that nothing is submitted for a request refused halfway.
    try {
      for (size_t i = 0; i < prompts.size(); ++i) {
        ChoiceState& c = (*choices)[i];
        c.text = std::make_unique<StopText>(*tokenizer, prompts[i], r.stop);
        for (int32_t t : prompts[i]) c.last_token = text_anchor(c.last_token, t);
        if (r.echo) {
          const Prompt& p = r.prompts[i / r.n];
          // Special tokens are left out of every text (the generated one too), so a prompt of
          // ids echoes as the same prompt given as text would.
          c.echo = p.text ? *p.text : tokenizer->decode(p.ids, /*skip_special_tokens=*/true);
        }
        if (i % r.n == 0) usage.prompt_tokens += static_cast<int64_t>(prompts[i].size());
      }
    } catch (const Error& e) {
      ++request_errors;
      return send_error(res, api_error(400, e.message(), "invalid_request_error", "",
                                       chat ? "messages" : "prompt"));
    }
    // What a JSON answer or a forced tool call must write (the call in the template's markup).
    std::shared_ptr<infer::OutputFormat> format;
    if (r.schema) {
      format = std::make_shared<infer::OutputFormat>();
      format->schema = r.schema;
      if (r.forced_tool_call) {
        const ToolCallMarkup markup = tool_call_markup(tool_format);
        format->prefix = markup.open;
        format->suffix = markup.close;
        format->max_blocks = r.max_tool_calls;
        format->between = "\n";  // parallel calls, one block a line
      }
    }
    // A client that has already left (one that closed its socket right after writing the request)
    // starts nothing: without this check the engine could finish all of max_tokens before the
    // handler's first look at the connection below.
    const ClientConnection client(req);
    if (client.gone()) {
      ++disconnects;
      res.status = 499;  // nginx's "client closed request"; nothing reads it
      return;
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t len = static_cast<int64_t>(prompts[i].size());
      const int64_t j = static_cast<int64_t>(i) % r.n;  // the choice's index among its prompt's
      infer::Request er;
      er.prompt = prompts[i];
      er.max_tokens =
          r.max_tokens.value_or(chat ? context - len : std::min<int64_t>(16, context - len));
      er.sampling.temperature = r.temperature;
      er.sampling.top_p = r.top_p;
      // A given seed gives the n choices of a prompt the seeds seed, seed + 1, ...
      er.sampling.seed =
          r.seed ? static_cast<uint64_t>(*r.seed) + static_cast<uint64_t>(j) : next_seed++;
      if (tokenizer->eos_id() >= 0 && !r.ignore_eos) er.stop_tokens.push_back(tokenizer->eos_id());
      er.stop_tokens.insert(er.stop_tokens.end(), r.stop_token_ids.begin(), r.stop_token_ids.end());
      er.sampling.top_k = r.top_k;
      er.adjustments.bias = r.logit_bias;
      er.adjustments.presence_penalty = r.presence_penalty;
      er.adjustments.frequency_penalty = r.frequency_penalty;
      er.adjustments.repetition_penalty = r.repetition_penalty;
      if (format) {
        er.format = format;
        er.tokens = json_token_table();
      }
      er.logprobs = r.logprobs;
      er.prompt_logprobs = r.echo && r.logprobs >= 0;
      channel->feeds[i].expected_prompt_logprobs = er.prompt_logprobs ? len - 1 : 0;
      er.on_logprob = [channel, i](const infer::TokenLogprob& lp) {
        std::lock_guard<std::mutex> lock(channel->mutex);
        Feed& f = channel->feeds[i];
        if (static_cast<int64_t>(f.prompt_logprobs.size()) < f.expected_prompt_logprobs)
          f.prompt_logprobs.push_back(lp);
        else
          f.logprobs.push_back(lp);
      };
      er.on_token = [channel, i](int32_t t) {
        std::lock_guard<std::mutex> lock(channel->mutex);
        channel->feeds[i].tokens.push_back(t);
        channel->ready.notify_one();
        return !channel->feeds[i].cancelled;
      };
      er.on_admitted = [channel, i](int64_t cached) {
        std::lock_guard<std::mutex> lock(channel->mutex);
        channel->feeds[i].cached_tokens = cached;
      };
      er.on_finish = [channel, i](infer::FinishReason reason, const std::string& error) {
        std::lock_guard<std::mutex> lock(channel->mutex);
        Feed& f = channel->feeds[i];
        f.finished = true;
        f.reason = reason;
        f.error = error;
        channel->ready.notify_one();
      };
      try {
        (*choices)[i].engine_id = scheduler->submit(std::move(er));
      } catch (const Error& e) {
        cancel(*channel, *choices, -1);  // the choices submitted before this one
        ++request_errors;
        return send_error(res, api_error(shutting_down ? 503 : 400, e.message(),
                                         shutting_down ? "server_error" : "invalid_request_error"));
      }
    }
    ++active;
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = unix_time();
    auto all_ended = [choices] {
      for (const ChoiceState& c : *choices)
        if (!c.ended) return false;
      return true;
    };
    // A prompt counts once, as in prompt_tokens: its first choice's cached tokens (the usage is
    // read once every choice has ended, so each was admitted).
    auto total_usage = [choices, usage, channel, n = r.n] {
      Usage u = usage;
      for (const ChoiceState& c : *choices) u.completion_tokens += c.completion_tokens;
      std::lock_guard<std::mutex> lock(channel->mutex);
      for (size_t i = 0; i < channel->feeds.size(); i += static_cast<size_t>(n))
        u.cached_tokens += channel->feeds[i].cached_tokens;
      return u;
    };

    if (!r.stream) {
      std::vector<Choice> out(choices->size());
      std::vector<std::string> pieces;
      std::string failure;  // the first choice the engine failed, or a decoding error
      while (!all_ended()) {
        try {
          advance(*channel, *choices, pieces);
          if (client.gone()) {
            // Nobody to answer: free the sequences now rather than at max_tokens.
            ++disconnects;
            cancel(*channel, *choices, -1);
            --active;
            res.status = 499;  // nginx's "client closed request"; nothing reads it
            return;
          }
        } catch (const Error& e) {  // a generated id the tokenizer cannot decode
          if (failure.empty()) failure = e.message();
          cancel(*channel, *choices, -1);
          for (ChoiceState& c : *choices) c.text_done = true;
          continue;  // the choices end once the engine has finished them
        }
        for (size_t i = 0; i < pieces.size(); ++i) {
          out[i].text += pieces[i];
          const ChoiceState& c = (*choices)[i];
          if (c.finish_reason == "error" && failure.empty()) {
            failure = c.error;
            cancel(*channel, *choices, -1);  // the other choices' answers would be thrown away
          }
        }
      }
      --active;
      if (!failure.empty()) {
        ++request_errors;
        return send_error(res, api_error(500, "generation failed: " + failure, "server_error"));
      }
      for (size_t i = 0; i < out.size(); ++i) {
        ChoiceState& c = (*choices)[i];
        out[i].text = c.echo + out[i].text;
        out[i].finish_reason = c.finish_reason;
        if (!r.tools.empty()) {
          ParsedToolCalls parsed = parse_tool_calls(out[i].text, tool_format);
          if (!parsed.calls.empty()) {
            out[i].text = parsed.content;
            out[i].tool_calls = tool_calls_json(parsed.calls, call_id(id, i), false);
            out[i].finish_reason = "tool_calls";
          }
        }
        out[i].logprobs = take_logprobs(*channel, c, i, r, prompts[i], true);
      }
      return send_json(
          res, 200, completion_response(id, options.model_name, created, out, total_usage(), chat));
    }

    // Streaming: server-sent events, chunks of each choice's text as it comes, each choice's
    // finish, the usage chunk when asked for, then [DONE]. An engine failure is sent as an
    // OpenAI error object, which the clients raise.
    const bool include_usage = r.include_usage_in_stream;
    auto done = std::make_shared<bool>(false);
    // A client that left: counted once, before its sequences are cancelled, so that /metrics
    // shows the count by the time the engine has ended them.
    auto client_left = [this, channel, choices, counted = std::make_shared<bool>(false)] {
      if (!*counted) ++disconnects;
      *counted = true;
      cancel(*channel, *choices, -1);
    };
    res.set_header("Cache-Control", "no-cache");
    // One call of the provider: what is new since the last, or false when the client is gone.
    auto provide = [=](httplib::DataSink& sink) {
      auto event = [&](const json& j) {
        const std::string line =
            "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
        return sink.is_writable() && sink.write(line.data(), line.size());
      };
      auto end_stream = [&] {
        static const std::string kDone = "data: [DONE]\n\n";
        sink.write(kDone.data(), kDone.size());
        sink.done();
        *done = true;
        return true;
      };
      if (*done) return false;
      std::vector<std::string> pieces;
      std::string failure;  // a decoding error, or the first choice the engine failed
      try {
        // No news: ask again unless the client has gone (a stream writes nothing before its
        // first token, so no write tells).
        if (!advance(*channel, *choices, pieces)) return !client.gone();
      } catch (const Error& e) {  // a generated id the tokenizer cannot decode
        failure = e.message();
      }
      for (const ChoiceState& c : *choices)
        if (failure.empty() && c.finish_reason == "error") failure = c.error;
      if (!failure.empty()) {
        cancel(*channel, *choices, -1);
        ++request_errors;
        return end_stream_with_error(
            sink, api_error(500, "generation failed: " + failure, "server_error"), done.get());
      }
      for (size_t i = 0; i < pieces.size(); ++i) {
        ChoiceState& c = (*choices)[i];
        if (c.finish_sent) continue;  // its last chunk went out (the others may go on)
        const auto index = static_cast<int64_t>(i);
        const bool first = !c.started;
        std::string piece = first ? c.echo + pieces[i] : pieces[i];
        // With tools offered, text from a call's opening tag on is held, and read as calls
        // once the choice's text is done.
        json calls;
        if (!r.tools.empty()) {
          c.tool_text += piece;
          size_t can = streamable_prefix(c.tool_text, tool_format);
          if (c.text_done) {
            ParsedToolCalls parsed = parse_tool_calls(c.tool_text, tool_format);
            if (parsed.calls.empty()) {
              can = c.tool_text.size();
            } else {
              calls = tool_calls_json(parsed.calls, call_id(id, i), true);
              c.finish_reason = "tool_calls";
            }
          }
          piece = can > c.tool_sent ? c.tool_text.substr(c.tool_sent, can - c.tool_sent) : "";
          c.tool_sent = std::max(c.tool_sent, can);
        }
        // A choice's first chunk goes out even when empty: chat's carries the role. The
        // log-probabilities of tokens whose text is held back (a possible stop string) go
        // with a later chunk.
        bool ok = true;
        if (!piece.empty() || first)
          ok = event(completion_chunk(id, options.model_name, created, index, piece, "", chat,
                                      first, include_usage,
                                      take_logprobs(*channel, c, i, r, prompts[i], first)));
        c.started = true;
        if (ok && !calls.is_null())
          ok =
              event(tool_calls_chunk(id, options.model_name, created, index, calls, include_usage));
        if (ok && c.text_done && !c.finish_sent) {
          const bool left = r.logprobs >= 0 && c.logprobs_sent < c.logprobs.size();
          ok = event(completion_chunk(
              id, options.model_name, created, index, "", c.finish_reason, chat, false,
              include_usage, left ? take_logprobs(*channel, c, i, r, prompts[i], false) : json()));
          c.finish_sent = true;
        }
        if (!ok) {
          client_left();  // free its sequences
          return false;
        }
      }
      if (!all_ended()) return true;
      if (include_usage &&
          !event(usage_chunk(id, options.model_name, created, total_usage(), chat)))
        return false;
      return end_stream();
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          // cpp-httplib does not catch what a provider throws (the process would abort): any
          // failure ends this stream with an error event, and the server goes on.
          try {
            return provide(sink);
          } catch (const std::exception& e) {
            cancel(*channel, *choices, -1);
            ++request_errors;
            if (*done) return false;  // it failed after its end: nothing more to send
            return end_stream_with_error(
                sink, api_error(500, std::string("streaming failed: ") + e.what(), "server_error"),
                done.get());
          }
        },
        [this, channel, client_left](bool success) {
          bool finished = true;
          {
            std::lock_guard<std::mutex> lock(channel->mutex);
            for (const Feed& f : channel->feeds) finished &= f.finished || f.cancelled;
          }
          if (!success || !finished) client_left();
          --active;
        });
  }

  std::string metrics_text() {
    const infer::SchedulerStats s = scheduler->stats();
    const double uptime = std::chrono::duration<double>(Clock::now() - started).count();
    std::ostringstream o;
    o.precision(15);  // counters print as whole numbers (the default 6 digits turn to 1.2e+06)
    auto metric = [&](const char* name, const char* type, const char* help, double value) {
      o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
        << name << ' ' << value << '\n';
    };
    metric("moex_requests_total", "counter", "HTTP generation requests received", requests.load());
    metric("moex_request_errors_total", "counter", "generation requests answered with an error",
           request_errors.load());
    metric("moex_client_disconnects_total", "counter",
           "requests whose client left before their end", disconnects.load());
    metric("moex_prompt_tokens_total", "counter", "prompt tokens prefilled", s.prompt_tokens);
    metric("moex_prompt_tokens_cached_total", "counter",
           "prompt tokens taken from the prefix cache instead of prefilled",
           s.cached_prompt_tokens);
    metric("moex_generated_tokens_total", "counter", "tokens generated", s.generated_tokens);
    metric("moex_requests_finished_total", "counter", "requests the engine finished", s.finished);
    metric("moex_queue_depth", "gauge", "requests waiting for a batch slot", s.waiting);
    metric("moex_running_requests", "gauge", "requests in the running batch", s.running);
    metric("moex_batch_size", "gauge", "sequences in the last engine step", s.last_batch);
    metric("moex_engine_steps_total", "counter", "engine steps", s.steps);
    metric("moex_kv_blocks_free", "gauge", "free KV-cache blocks", s.free_blocks);
    metric("moex_kv_blocks_total", "gauge", "KV-cache blocks", s.total_blocks);
    metric("moex_kv_blocks_cached", "gauge", "KV-cache blocks the prefix cache holds",
           s.cached_blocks);
    metric("moex_generated_tokens_per_second", "gauge", "generated tokens / uptime",
           uptime > 0 ? s.generated_tokens / uptime : 0.0);
    return o.str();
  }

  void get(const std::string& path, httplib::Server::Handler handler) {
    http.Get(path, std::move(handler));  // cpp-httplib answers HEAD with it too
    allowed_methods[path] = "GET, HEAD";
  }
  void post(const std::string& path, httplib::Server::Handler handler) {
    http.Post(path, std::move(handler));
    allowed_methods[path] = "POST";
  }

  void routes() {
    // Every thread starts at once: past kMaxHttpThreads the requests wait in the pool's queue.
    const int64_t held = std::min(options.max_waiting, kMaxHttpThreads) +
                         std::min(options.scheduler.max_batch, kMaxHttpThreads) + 16;
    const size_t threads = static_cast<size_t>(
        std::min(std::max<int64_t>(options.http_threads, held), kMaxHttpThreads));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(options.max_body_bytes);
    post("/v1/completions",
         [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, false); });
    post("/v1/chat/completions",
         [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, true); });
    const json model_object = {
        {"id", options.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "moex"}};
    get("/v1/models", [model_object](const httplib::Request&, httplib::Response& s) {
      send_json(s, 200, {{"object", "list"}, {"data", json::array({model_object})}});
    });
    get("/v1/models/(.+)", [this, model_object](const httplib::Request& q, httplib::Response& s) {
      if (q.matches[1] == options.model_name) return send_json(s, 200, model_object);
      send_error(s,
                 api_error(404,
                           "the model '" + q.matches[1].str() +
                               "' does not exist; this server serves '" + options.model_name + "'",
                           "invalid_request_error", "model_not_found", "model"));
    });
    get("/health", [this](const httplib::Request&, httplib::Response& s) {
      send_json(s, shutting_down ? 503 : 200, {{"status", shutting_down ? "shutting_down" : "ok"}});
    });
    get("/metrics", [this](const httplib::Request&, httplib::Response& s) {
      s.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    // A body whose length two headers disagree on is refused before any handler reads it: a
    // proxy in front could have framed the request by the other one (request smuggling). The
    // response asks the client to close; cpp-httplib 0.11 frames the body by the first
    // Content-Length and keeps the connection itself open (a handler cannot close it).
    http.set_pre_routing_handler([](const httplib::Request& q, httplib::Response& s) {
      const size_t lengths = q.get_header_value_count("Content-Length");
      bool conflicting = lengths > 0 && q.has_header("Transfer-Encoding");
      for (size_t i = 1; i < lengths; ++i)
        conflicting |=
            q.get_header_value("Content-Length", i) != q.get_header_value("Content-Length");
      if (!conflicting) return httplib::Server::HandlerResponse::Unhandled;
      s.set_header("Connection", "close");
      send_error(s,
                 api_error(400,
                           "conflicting message length: Content-Length given twice with different "
                           "values, or with Transfer-Encoding",
                           "invalid_request_error"));
      return httplib::Server::HandlerResponse::Handled;
    });
    // Browsers: every answer allows the configured origin, and a CORS preflight (OPTIONS) on any
    // path is answered with the methods and headers a client may use.
    if (!options.cors_origin.empty()) {
      http.set_default_headers({{"Access-Control-Allow-Origin", options.cors_origin}});
      http.Options(R"(/.*)", [](const httplib::Request& q, httplib::Response& s) {
        s.status = 204;
        s.set_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS");
        const std::string asked = q.get_header_value("Access-Control-Request-Headers");
        s.set_header("Access-Control-Allow-Headers",
                     asked.empty() ? "Authorization, Content-Type" : asked);
        s.set_header("Access-Control-Max-Age", "600");
      });
    }
    // Anything else: OpenAI-shaped 404 / 405 (with Allow), and 413 for an oversized body.
    http.set_error_handler([this](const httplib::Request& q, httplib::Response& s) {
      if (!s.body.empty()) return;
      const auto endpoint = allowed_methods.find(q.path);
      if (s.status == 404 && endpoint != allowed_methods.end()) {
        s.status = 405;
        s.set_header("Allow", endpoint->second);
      }
      const int status = s.status;
      send_error(
          s, api_error(status,
                       status == 413   ? "the request body is too large"
                       : status == 400 ? "malformed HTTP request (a POST needs a Content-Length "
                                         "or chunked body)"
                       : status == 404 ? "no such endpoint: " + q.method + " " + q.path
                       : status == 405 ? q.path + " takes " + endpoint->second + ", not " + q.method
                                       : "the request failed (HTTP " + std::to_string(status) + ")",
                       "invalid_request_error"));
    });
    http.set_exception_handler(
        [this](const httplib::Request&, httplib::Response& s, std::exception_ptr ep) {
          ++request_errors;
          std::string what = "internal error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          }
          send_error(s, api_error(500, what, "server_error"));
        });
  }
};

Server::Server(const ServerOptions& options) : impl_(std::make_unique<Impl>(options)) {}

Server::~Server() {
  shutdown();
  if (impl_->drainer.joinable()) impl_->drainer.join();
  if (impl_->engine.joinable()) impl_->engine.join();
}

int Server::bind() {
  Impl& m = *impl_;
  if (m.options.port == 0) {
    m.bound_port = m.http.bind_to_any_port(m.options.host);
  } else {
    m.bound_port = m.http.bind_to_port(m.options.host, m.options.port) ? m.options.port : -1;
  }
  MOEX_CHECK(m.bound_port > 0, "serve: cannot listen on ", m.options.host, ":", m.options.port,
             " (in use, or not an address of this machine?)");
  return m.bound_port;
}

void Server::serve() {
  Impl& m = *impl_;
  MOEX_CHECK(m.bound_port > 0, "serve: bind() first");
  m.engine_started = true;
  m.engine = std::thread([&m] {
    m.scheduler->run();
    m.engine_done = true;
  });
  MOEX_INFO("serving ", m.options.model_name, " on http://", m.options.host, ":", m.bound_port,
            " (", m.model->device().str(), ", max batch ", m.scheduler->options().max_batch,
            ", context ", m.scheduler->max_context(), ")");
  m.http.listen_after_bind();
  if (m.engine.joinable()) m.engine.join();
}

void Server::shutdown() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.shutdown_mutex);
  if (m.shutting_down.exchange(true)) return;
  // Drain on a helper thread: finish every request (the handlers stream their ends), then stop
  // listening, which makes serve() return. Nothing here blocks the caller.
  m.drainer = std::thread([&m] {
    m.scheduler->stop(/*drain=*/true);
    while (m.engine_started && !m.engine_done)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    for (int i = 0; i < 3000 && m.active.load() > 0; ++i)  // handlers writing their last bytes
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    m.http.stop();
  });
}

int Server::port() const {
  return impl_->bound_port;
}
const std::string& Server::model_name() const {
  return impl_->options.model_name;
}

}  // namespace moex::serve
