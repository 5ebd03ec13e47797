#include "data/tokenizer_hf.h"

#include <algorithm>

#include "core/error.h"
#include "data/bpe_byte_level.h"
#include "data/unicode.h"

namespace moex::data {
namespace {

void replace_all(std::string* s, const std::string& pattern, const std::string& content) {
  if (pattern.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s->find(pattern, pos);
    if (hit == std::string::npos) break;
    out.append(*s, pos, hit - pos);
    out += content;
    pos = hit + pattern.size();
  }
  if (pos == 0) return;
  out.append(*s, pos, std::string::npos);
  *s = std::move(out);
}

// The code point that ends just before byte `end` (text[start..end) is known to be valid UTF-8
// up to that point); *begin receives where it starts.
uint32_t char_before(std::string_view text, size_t end, size_t* begin) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  *begin = b;
  size_t pos = b;
  return utf8_next(text, &pos);
}

bool is_word_char(uint32_t cp) {
  return cp == '_' || is_letter(cp) || is_number(cp);
}

std::string_view trim_whitespace(std::string_view s, bool left, bool right) {
  if (left) {
    size_t pos = 0;
    while (pos < s.size()) {
      size_t next = pos;
      if (!is_whitespace(utf8_next(s, &next))) break;
      pos = next;
    }
    s.remove_prefix(pos);
  }
  if (right) {
    while (!s.empty()) {
      size_t begin = 0;
      if (!is_whitespace(char_before(s, s.size(), &begin))) break;
      s.remove_suffix(s.size() - begin);
    }
  }
  return s;
}

// "<0xNN>" -> NN, or -1.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int value = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    int d = -1;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    if (d < 0) return -1;
    value = value * 16 + d;
  }
  return value;
}

}  // namespace

HfTokenizer::HfTokenizer(HfTokenizerSpec spec) : spec_(std::move(spec)) {
  vocab_size_ = spec_.model->num_ids();
  added_by_first_byte_.resize(256);
  for (size_t k = 0; k < spec_.added_tokens.size(); ++k) {
    const HfAddedToken& t = spec_.added_tokens[k];
    vocab_size_ = std::max<int64_t>(vocab_size_, t.id + 1);
    added_index_by_id_.emplace(t.id, k);
    added_id_by_content_.emplace(t.content, t.id);
    if (t.content.empty()) continue;
    added_by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(k);
  }
  for (auto& list : added_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return spec_.added_tokens[a].content.size() > spec_.added_tokens[b].content.size();
    });
  }
}

const HfAddedToken* HfTokenizer::added_by_id(int32_t id) const {
  auto it = added_index_by_id_.find(id);
  return it == added_index_by_id_.end() ? nullptr : &spec_.added_tokens[it->second];
}

int32_t HfTokenizer::token_to_id(const std::string& token) const {
  auto it = added_id_by_content_.find(token);
  return it != added_id_by_content_.end() ? it->second : spec_.model->token_to_id(token);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (const HfAddedToken* t = added_by_id(id)) return t->content;
  const std::string* token = spec_.model->id_to_token(id);
  MOEX_CHECK(token != nullptr, "token id ", id, " is not in the vocabulary (size ", vocab_size_,
             ")");
  return *token;
}

bool HfTokenizer::is_special(int32_t id) const {
  const HfAddedToken* t = added_by_id(id);
  return t != nullptr && t->special;
}

std::vector<HfTokenizer::Segment> HfTokenizer::split_added_tokens(std::string_view text) const {
  std::vector<Segment> segments;
  size_t text_begin = 0, i = 0;
  while (i < text.size()) {
    const HfAddedToken* match = nullptr;
    for (size_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const HfAddedToken& t = spec_.added_tokens[k];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        size_t b = 0, after = i + t.content.size();
        if (i > 0 && is_word_char(char_before(text, i, &b))) continue;
        if (after < text.size() && is_word_char(utf8_next(text, &after))) continue;
      }
      match = &t;
      break;
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + match->content.size();
    if (match->lstrip) {
      size_t b = 0;
      while (begin > text_begin && is_whitespace(char_before(text, begin, &b))) begin = b;
    }
    if (match->rstrip) {
      while (end < text.size()) {
        size_t next = end;
        if (!is_whitespace(utf8_next(text, &next))) break;
        end = next;
      }
    }
    if (begin > text_begin) segments.push_back({text_begin, begin, -1});
    segments.push_back({begin, end, match->id});
    text_begin = i = end;
  }
  if (text_begin < text.size()) segments.push_back({text_begin, text.size(), -1});
  return segments;
}

void HfTokenizer::encode_section(std::string_view section, bool at_text_start,
                                 std::vector<int32_t>* ids) const {
  std::string normalized(section);
  for (const HfNormalizerStep& step : spec_.normalizer) {
    switch (step.kind) {
      case HfNormalizerStep::Kind::kPrepend:
        if (!normalized.empty()) normalized.insert(0, step.text);
        break;
      case HfNormalizerStep::Kind::kReplace:
        replace_all(&normalized, step.text, step.content);
        break;
      case HfNormalizerStep::Kind::kStrip:
        normalized = std::string(trim_whitespace(normalized, step.left, step.right));
        break;
      case HfNormalizerStep::Kind::kNfc:
        normalized = nfc_normalize(normalized);
        break;
    }
  }
  struct Word {
    std::string text;
    bool at_start;  // begins at offset 0 of the whole input (Metaspace prepend_scheme "first")
  };
  std::vector<Word> words{{std::move(normalized), at_text_start}};
  for (const HfPreTokenizerStep& step : spec_.pre_tokenizer) {
    std::vector<Word> next;
    for (Word& w : words) {
      if (step.kind == HfPreTokenizerStep::Kind::kSplit) {
        bool first = true;
        for (std::string_view piece : split_pre_tokenize(step.split_spec, w.text)) {
          next.push_back({std::string(piece), w.at_start && first});
          first = false;
        }
        continue;
      }
      if (step.kind == HfPreTokenizerStep::Kind::kByteLevel) {
        if (step.add_prefix_space && (w.text.empty() || w.text[0] != ' ')) w.text.insert(0, " ");
        if (step.use_regex) {
          bool first = true;
          for (std::string_view piece : gpt2_split(w.text)) {
            next.push_back({byte_level_encode(piece), w.at_start && first});
            first = false;
          }
        } else {
          next.push_back({byte_level_encode(w.text), w.at_start});
        }
        continue;
      }
      // Metaspace
      const std::string& rep = step.replacement;
      replace_all(&w.text, " ", rep);
      const bool prepend = step.prepend == HfPreTokenizerStep::Prepend::kAlways ||
                           (step.prepend == HfPreTokenizerStep::Prepend::kFirst && w.at_start);
      if (prepend && w.text.compare(0, rep.size(), rep) != 0) w.text.insert(0, rep);
      if (!step.split || rep.empty()) {
        next.push_back(std::move(w));
        continue;
      }
      // Split before every replacement char (MergedWithNext).
      size_t piece_begin = 0;
      bool first = true;
      for (size_t pos = w.text.find(rep, 1); pos != std::string::npos;
           pos = w.text.find(rep, pos + rep.size())) {
        next.push_back({w.text.substr(piece_begin, pos - piece_begin), w.at_start && first});
        first = false;
        piece_begin = pos;
      }
      next.push_back({w.text.substr(piece_begin), w.at_start && first});
    }
    words = std::move(next);
  }
  for (const Word& w : words) spec_.model->encode_word(w.text, ids);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = spec_.prefix_ids;
  for (const Segment& s : split_added_tokens(text)) {
    if (s.added_id >= 0) {
      ids.push_back(s.added_id);
    } else {
      encode_section(text.substr(s.begin, s.end - s.begin), s.begin == 0, &ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), spec_.suffix_ids.begin(), spec_.suffix_ids.end());
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return run_decoder(ids, skip_special_tokens, /*raw=*/false);
}

std::string HfTokenizer::decode_bytes(const std::vector<int32_t>& ids) const {
  return run_decoder(ids, /*skip_special_tokens=*/false, /*raw=*/true);
}

std::string HfTokenizer::run_decoder(const std::vector<int32_t>& ids, bool skip_special_tokens,
                                     bool raw) const {
  // decode's output is valid UTF-8; decode_bytes's is the bytes as they are.
  auto finish = [raw](const std::string& bytes) { return raw ? bytes : utf8_sanitize(bytes); };
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const HfAddedToken* t = added_by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(t->content);
      continue;
    }
    const std::string* token = spec_.model->id_to_token(id);
    MOEX_CHECK(token != nullptr, "token id ", id, " is not in the vocabulary (size ", vocab_size_,
               ")");
    tokens.push_back(*token);
  }
  if (!spec_.has_decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
    return finish(out);
  }
  for (const HfDecoderStep& step : spec_.decoder) {
    switch (step.kind) {
      case HfDecoderStep::Kind::kReplace:
        for (auto& t : tokens) replace_all(&t, step.pattern, step.content);
        break;
      case HfDecoderStep::Kind::kByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        size_t num_bytes = 0;
        auto flush = [&]() {
          if (num_bytes == 0) return;
          if (raw || is_valid_utf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t k = 0; k < num_bytes; ++k) out.push_back("\xEF\xBF\xBD");  // U+FFFD
          }
          bytes.clear();
          num_bytes = 0;
        };
        for (auto& t : tokens) {
          const int b = parse_byte_token(t);
          if (b >= 0) {
            bytes.push_back(static_cast<char>(b));
            ++num_bytes;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case HfDecoderStep::Kind::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case HfDecoderStep::Kind::kStrip:
        for (auto& t : tokens) {
          const std::string& c = step.content;
          if (c.empty()) break;
          for (int k = 0; k < step.start && t.compare(0, c.size(), c) == 0; ++k)
            t.erase(0, c.size());
          for (int k = 0; k < step.stop && t.size() >= c.size() &&
                          t.compare(t.size() - c.size(), c.size(), c) == 0;
               ++k)
            t.erase(t.size() - c.size());
        }
        break;
      case HfDecoderStep::Kind::kByteLevel: {
        std::string bytes;
        for (const auto& t : tokens) {
          std::string decoded;
          bytes += byte_level_decode(t, &decoded) ? decoded : t;
        }
        tokens.assign(1, finish(bytes));
        break;
      }
      case HfDecoderStep::Kind::kMetaspace:
        for (size_t k = 0; k < tokens.size(); ++k) {
          replace_all(&tokens[k], step.replacement, " ");
          if (k == 0 && step.prepend && !tokens[k].empty() && tokens[k][0] == ' ')
            tokens[k].erase(0, 1);
        }
        break;
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return finish(out);
}

}  // namespace moex::data
