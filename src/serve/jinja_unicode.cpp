#include "serve/jinja_unicode.h"

namespace moex::serve::jinja {

size_t decode_utf8(const std::string& text, size_t pos, uint32_t& cp) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  size_t length = 0;
  if (lead < 0x80) {
    cp = lead;
    return 1;
  } else if ((lead & 0xE0) == 0xC0) {
    length = 2;
    cp = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    cp = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    cp = lead & 0x07;
  } else {
    cp = lead;
    return 1;
  }
  if (pos + length > text.size()) {
    cp = lead;
    return 1;
  }
  for (size_t i = 1; i < length; ++i) {
    const unsigned char next = byte(pos + i);
    if ((next & 0xC0) != 0x80) {
      cp = lead;
      return 1;
    }
    cp = (cp << 6) | (next & 0x3F);
  }
  return length;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_js_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

size_t js_whitespace_at(const std::string& text, size_t pos) {
  if (pos >= text.size()) return 0;
  uint32_t cp = 0;
  const size_t length = decode_utf8(text, pos, cp);
  return is_js_whitespace(cp) ? length : 0;
}

size_t js_trim_end_offset(const std::string& text) {
  // Walk forward, remembering where the last run of whitespace began (UTF-8 cannot be decoded
  // backwards without re-synchronising, and templates are short).
  size_t end = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    uint32_t cp = 0;
    const size_t length = decode_utf8(text, pos, cp);
    pos += length;
    if (!is_js_whitespace(cp)) end = pos;
  }
  return end;
}

std::string js_trim_start(const std::string& text) {
  size_t pos = 0;
  while (size_t length = js_whitespace_at(text, pos)) pos += length;
  return text.substr(pos);
}

std::string js_trim_end(const std::string& text) { return text.substr(0, js_trim_end_offset(text)); }

std::string js_trim(const std::string& text) { return js_trim_start(js_trim_end(text)); }

namespace {

// Simple one-to-one case pairs: upper = lower - offset over the listed lower-case ranges.
struct CaseRange {
  uint32_t lower_first, lower_last, step;  // step 1: every code point; 2: every other one
  int32_t offset;                          // lower - upper
};

constexpr CaseRange kCaseRanges[] = {
    {0x61, 0x7A, 1, 32},        // a-z
    {0xE0, 0xF6, 1, 32},        // à-ö
    {0xF8, 0xFE, 1, 32},        // ø-þ
    {0x101, 0x137, 2, 1},       // Latin Extended-A pairs ā..ķ
    {0x13A, 0x148, 2, 1},       // ĺ..ň
    {0x14B, 0x177, 2, 1},       // ŋ..ŷ
    {0x17A, 0x17E, 2, 1},       // ź..ž
    {0x3B1, 0x3C1, 1, 32},      // α-ρ
    {0x3C3, 0x3CB, 1, 32},      // σ-ϋ
    {0x430, 0x44F, 1, 32},      // а-я
    {0x450, 0x45F, 1, 80},      // ѐ-џ
};

uint32_t upper_of(uint32_t cp) {
  if (cp == 0x3C2) return 0x3A3;  // final sigma
  if (cp == 0xFF) return 0x178;
  for (const CaseRange& r : kCaseRanges) {
    if (cp >= r.lower_first && cp <= r.lower_last && (cp - r.lower_first) % r.step == 0) {
      return cp - r.offset;
    }
  }
  return cp;
}

uint32_t lower_of(uint32_t cp) {
  if (cp == 0x178) return 0xFF;
  for (const CaseRange& r : kCaseRanges) {
    const uint32_t first = r.lower_first - r.offset, last = r.lower_last - r.offset;
    if (cp >= first && cp <= last && (cp - first) % r.step == 0) return cp + r.offset;
  }
  return cp;
}

}  // namespace

std::string to_upper(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    uint32_t cp = 0;
    const size_t length = decode_utf8(text, pos, cp);
    if (cp == 0xDF) {
      out += "SS";  // JavaScript upper-cases ß to two letters
    } else if (length == 1 && cp >= 0x80) {
      out += text[pos];  // malformed byte, kept
    } else {
      append_utf8(out, upper_of(cp));
    }
    pos += length;
  }
  return out;
}

std::string to_lower(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    uint32_t cp = 0;
    const size_t length = decode_utf8(text, pos, cp);
    if (length == 1 && cp >= 0x80) {
      out += text[pos];
    } else {
      append_utf8(out, lower_of(cp));
    }
    pos += length;
  }
  return out;
}

int64_t utf16_length(const std::string& text) {
  int64_t units = 0;
  for (size_t pos = 0; pos < text.size();) {
    uint32_t cp = 0;
    pos += decode_utf8(text, pos, cp);
    units += cp >= 0x10000 ? 2 : 1;
  }
  return units;
}

size_t code_point_count(const std::string& text) {
  size_t count = 0;
  for (size_t pos = 0; pos < text.size();) {
    uint32_t cp = 0;
    pos += decode_utf8(text, pos, cp);
    ++count;
  }
  return count;
}

}  // namespace moex::serve::jinja
