#include "data/unicode.h"

#include <algorithm>

namespace moex::data {
namespace {

// Length of a well-formed sequence starting at text[pos], or 0 when it is ill-formed; `*valid`
// receives how many bytes form its longest valid prefix (the "maximal subpart").
size_t sequence_length(std::string_view text, size_t pos, size_t* maximal_subpart) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  *maximal_subpart = 1;
  if (lead < 0x80) return 1;
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (pos + k >= text.size()) return 0;
    const unsigned char c = byte(pos + k);
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return 0;
    *maximal_subpart = k + 1;
  }
  return need + 1;
}

bool in_ranges(uint32_t cp, const detail::CodePointRange* ranges, size_t n) {
  const auto* end = ranges + n;
  const auto* it = std::upper_bound(
      ranges, end, cp, [](uint32_t v, const detail::CodePointRange& r) { return v < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

}  // namespace

uint32_t utf8_next(std::string_view text, size_t* pos) {
  size_t subpart = 0;
  const size_t len = sequence_length(text, *pos, &subpart);
  if (len == 0) {
    *pos += 1;
    return kReplacementChar;
  }
  const auto byte = [&](size_t i) {
    return static_cast<uint32_t>(static_cast<unsigned char>(text[i]));
  };
  uint32_t cp = 0;
  switch (len) {
    case 1:
      cp = byte(*pos);
      break;
    case 2:
      cp = ((byte(*pos) & 0x1F) << 6) | (byte(*pos + 1) & 0x3F);
      break;
    case 3:
      cp = ((byte(*pos) & 0x0F) << 12) | ((byte(*pos + 1) & 0x3F) << 6) | (byte(*pos + 2) & 0x3F);
      break;
    default:
      cp = ((byte(*pos) & 0x07) << 18) | ((byte(*pos + 1) & 0x3F) << 12) |
           ((byte(*pos + 2) & 0x3F) << 6) | (byte(*pos + 3) & 0x3F);
  }
  *pos += len;
  return cp;
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = kReplacementChar;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_sanitize(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t subpart = 0;
    const size_t len = sequence_length(bytes, pos, &subpart);
    if (len == 0) {
      utf8_append(kReplacementChar, &out);
      pos += subpart;
    } else {
      out.append(bytes.substr(pos, len));
      pos += len;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t pos = 0, subpart = 0;
  while (pos < bytes.size()) {
    const size_t len = sequence_length(bytes, pos, &subpart);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(cp, detail::kLetterRanges, detail::kNumLetterRanges);
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(cp, detail::kNumberRanges, detail::kNumNumberRanges);
}

bool is_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace moex::data
