#include "serve/server.h"

#include <httplib.h>

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
#include "infer/model_tokenizer.h"
#include "model/model_io.h"
#include "serve/chat_template.h"
#include "serve/openai_api.h"
#include "serve/stop_text.h"

namespace moex::serve {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// What the engine thread hands one HTTP handler: tokens as they come, then the end.
struct Channel {
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<int32_t> tokens;
  bool finished = false;
  infer::FinishReason reason = infer::FinishReason::kError;
  std::string error;
  std::atomic<bool> abandoned{false};  // the client went away: the engine cancels at its next token
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

struct Server::Impl {
  ServerOptions options;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::unique_ptr<ChatTemplate> chat_template;
  std::map<std::string, std::string> special_tokens;
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
    model = model::load_model(options.model_dir, options.device);
    tokenizer = infer::open_model_tokenizer(options.model_dir);
    MOEX_CHECK(tokenizer != nullptr, options.model_dir,
               ": no tokenizer (tokenizer.json or *.model) to serve text with");
    chat_template = std::make_unique<ChatTemplate>(load_chat_template(options.model_dir));
    special_tokens = load_special_tokens(options.model_dir);
    // A moex model directory has no tokenizer_config.json: the tokenizer's own BOS/EOS serve.
    if (special_tokens["bos_token"].empty() && tokenizer->bos_id() >= 0)
      special_tokens["bos_token"] = tokenizer->id_to_token(tokenizer->bos_id());
    if (special_tokens["eos_token"].empty() && tokenizer->eos_id() >= 0)
      special_tokens["eos_token"] = tokenizer->id_to_token(tokenizer->eos_id());
    scheduler = std::make_unique<infer::Scheduler>(*model, options.scheduler);
    routes();
  }

  // The prompt's token ids, or an ApiError.
  std::vector<int32_t> prompt_ids(const GenerationRequest& r) {
    if (r.chat) {
      std::string text;
      try {
        text = chat_template->render(r.messages, true, special_tokens);
      } catch (const ChatTemplateRaised& e) {
        throw api_error(400, "the model's chat template refused the conversation: " + e.reason(),
                        "invalid_request_error", "", "messages");
      }
      return tokenizer->encode(text, /*add_special_tokens=*/false);  // the template adds BOS
    }
    if (r.prompt_text) return tokenizer->encode(*r.prompt_text, true);
    return r.prompt_ids;  // Scheduler::submit checks them against the vocabulary (a 400)
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    ++requests;
    if (shutting_down) {
      ++request_errors;
      return send_error(res, api_error(503, "the server is shutting down", "server_error"));
    }
    GenerationRequest r;
    std::vector<int32_t> prompt;
    try {
      r = parse_generation_request(req.body, chat);
      if (r.model != options.model_name)
        throw api_error(404,
                        "the model '" + r.model + "' does not exist; this server serves '" +
                            options.model_name + "'",
                        "invalid_request_error", "model_not_found", "model");
      prompt = prompt_ids(r);
      if (prompt.empty())
        throw api_error(400, "the prompt is empty", "invalid_request_error", "", "prompt");
    } catch (const ApiError& e) {
      ++request_errors;
      return send_error(res, e);
    } catch (const Error& e) {  // tokenizer or template errors on this request's text
      ++request_errors;
      return send_error(res, api_error(400, e.message(), "invalid_request_error"));
    }
    const int64_t context = scheduler->max_context();
    const int64_t prompt_len = static_cast<int64_t>(prompt.size());
    const int64_t max_tokens = r.max_tokens.value_or(
        chat ? context - prompt_len : std::min<int64_t>(16, context - prompt_len));
    if (prompt_len >= context || prompt_len + max_tokens > context) {
      ++request_errors;
      return send_error(
          res, api_error(400,
                         "this model's maximum context length is " + std::to_string(context) +
                             " tokens; the request has " + std::to_string(prompt_len) +
                             " prompt tokens and asks for " + std::to_string(max_tokens) + " more",
                         "invalid_request_error", "context_length_exceeded",
                         r.max_tokens ? "max_tokens" : "messages"));
    }
    if (scheduler->stats().waiting >= options.max_waiting) {
      ++request_errors;
      return send_error(
          res, api_error(429, "too many requests are waiting; retry later", "rate_limit_exceeded"));
    }

    auto channel = std::make_shared<Channel>();
    infer::Request er;
    er.prompt = prompt;
    er.max_tokens = max_tokens;
    er.sampling.temperature = r.temperature;
    er.sampling.top_p = r.top_p;
    er.sampling.seed = r.seed ? static_cast<uint64_t>(*r.seed) : next_seed++;
    if (tokenizer->eos_id() >= 0) er.stop_tokens.push_back(tokenizer->eos_id());
    er.on_token = [channel](int32_t t) {
      std::lock_guard<std::mutex> lock(channel->mutex);
      channel->tokens.push_back(t);
      channel->ready.notify_one();
      return !channel->abandoned.load();
    };
    er.on_finish = [channel](infer::FinishReason reason, const std::string& error) {
      std::lock_guard<std::mutex> lock(channel->mutex);
      channel->finished = true;
      channel->reason = reason;
      channel->error = error;
      channel->ready.notify_one();
    };
    uint64_t engine_id = 0;
    try {
      engine_id = scheduler->submit(std::move(er));
    } catch (const Error& e) {
      ++request_errors;
      return send_error(res, api_error(shutting_down ? 503 : 400, e.message(),
                                       shutting_down ? "server_error" : "invalid_request_error"));
    }
    ++active;
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = unix_time();
    auto text = std::make_shared<StopText>(*tokenizer, prompt, r.stop);
    Usage usage;
    usage.prompt_tokens = prompt_len;

    // Takes the next tokens (or the end) from the channel; returns false at the end.
    auto next = [channel](std::vector<int32_t>& out, bool* finished) {
      std::unique_lock<std::mutex> lock(channel->mutex);
      channel->ready.wait(lock, [&] { return !channel->tokens.empty() || channel->finished; });
      out.assign(channel->tokens.begin(), channel->tokens.end());
      channel->tokens.clear();
      *finished = channel->finished && out.empty();
    };
    auto reason_of = [channel, text]() -> std::string {
      if (text->stopped()) return "stop";
      return channel->reason == infer::FinishReason::kLength ? "length" : "stop";
    };
    auto stop_engine = [this, channel, engine_id] {
      channel->abandoned = true;
      scheduler->cancel(engine_id);
    };

    if (!r.stream) {
      std::string out;
      std::vector<int32_t> got;
      for (bool finished = false;;) {
        next(got, &finished);
        if (finished) break;
        for (int32_t t : got) {
          ++usage.completion_tokens;
          out += text->push(t);
          if (text->stopped()) stop_engine();
        }
      }
      out += text->finish();
      --active;
      if (channel->reason == infer::FinishReason::kError) {
        ++request_errors;
        return send_error(res,
                          api_error(500, "generation failed: " + channel->error, "server_error"));
      }
      return send_json(
          res, 200,
          completion_response(id, options.model_name, created, out, reason_of(), usage, chat));
    }

    // Streaming: server-sent events, one chunk per piece of text, then [DONE].
    const bool include_usage = r.include_usage_in_stream;
    auto first = std::make_shared<bool>(true);
    auto done = std::make_shared<bool>(false);
    auto usage_ptr = std::make_shared<Usage>(usage);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          auto event = [&](const json& j) {
            const std::string line =
                "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            return sink.is_writable() && sink.write(line.data(), line.size());
          };
          if (*done) return false;
          std::vector<int32_t> got;
          bool finished = false;
          next(got, &finished);
          std::string piece;
          for (int32_t t : got) {
            ++usage_ptr->completion_tokens;
            piece += text->push(t);
          }
          if (text->stopped()) {
            stop_engine();
            finished = true;
          }
          if (!piece.empty() || *first) {
            if (!event(
                    completion_chunk(id, options.model_name, created, piece, "", chat, *first))) {
              stop_engine();  // the client went away: free its sequence
              return false;
            }
            *first = false;
          }
          if (!finished) return true;
          // Drain whatever the engine still sends for a stopped request, then end the stream.
          if (text->stopped()) {
            std::vector<int32_t> rest;
            for (bool end = false; !end;) next(rest, &end);
          }
          const std::string tail = text->finish();
          const std::string reason =
              channel->reason == infer::FinishReason::kError ? "error" : reason_of();
          bool ok =
              event(completion_chunk(id, options.model_name, created, tail, reason, chat, false));
          if (ok && include_usage)
            ok = event(usage_chunk(id, options.model_name, created, *usage_ptr, chat));
          static const std::string kDone = "data: [DONE]\n\n";
          if (ok) sink.write(kDone.data(), kDone.size());
          sink.done();
          *done = true;
          return true;
        },
        [this, channel, stop_engine](bool success) {
          bool finished = false;
          {
            std::lock_guard<std::mutex> lock(channel->mutex);
            finished = channel->finished;
          }
          if (!success || !finished) {
            ++disconnects;
            stop_engine();
          }
          --active;
        });
  }

  std::string metrics_text() {
    const infer::SchedulerStats s = scheduler->stats();
    const double uptime = std::chrono::duration<double>(Clock::now() - started).count();
    std::ostringstream o;
    auto metric = [&](const char* name, const char* type, const char* help, double value) {
      o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
        << name << ' ' << value << '\n';
    };
    metric("moex_requests_total", "counter", "HTTP generation requests received", requests.load());
    metric("moex_request_errors_total", "counter", "generation requests answered with an error",
           request_errors.load());
    metric("moex_client_disconnects_total", "counter", "streams the client closed early",
           disconnects.load());
    metric("moex_prompt_tokens_total", "counter", "prompt tokens prefilled", s.prompt_tokens);
    metric("moex_generated_tokens_total", "counter", "tokens generated", s.generated_tokens);
    metric("moex_requests_finished_total", "counter", "requests the engine finished", s.finished);
    metric("moex_queue_depth", "gauge", "requests waiting for a batch slot", s.waiting);
    metric("moex_running_requests", "gauge", "requests in the running batch", s.running);
    metric("moex_batch_size", "gauge", "sequences in the last engine step", s.last_batch);
    metric("moex_engine_steps_total", "counter", "engine steps", s.steps);
    metric("moex_kv_blocks_free", "gauge", "free KV-cache blocks", s.free_blocks);
    metric("moex_kv_blocks_total", "gauge", "KV-cache blocks", s.total_blocks);
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
    http.new_task_queue = [n = options.http_threads] { return new httplib::ThreadPool(n); };
    http.set_payload_max_length(options.max_body_bytes);
    post("/v1/completions",
         [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, false); });
    post("/v1/chat/completions",
         [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, true); });
    get("/v1/models", [this](const httplib::Request&, httplib::Response& s) {
      send_json(s, 200,
                {{"object", "list"},
                 {"data", json::array({{{"id", options.model_name},
                                        {"object", "model"},
                                        {"created", 0},
                                        {"owned_by", "moex"}}})}});
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
