#include "data/bpe_byte_level.h"

#include <array>
#include <unordered_map>

#include "data/unicode.h"

namespace moex::data {
namespace {

struct ByteMap {
  std::array<std::string, 256> encoded;  // byte -> UTF-8 of its stand-in
  std::unordered_map<uint32_t, unsigned char> decoded;

  ByteMap() {
    std::array<uint32_t, 256> cp{};
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) cp[b] = printable[b] ? b : next++;
    for (int b = 0; b < 256; ++b) {
      utf8_append(cp[b], &encoded[b]);
      decoded[cp[b]] = static_cast<unsigned char>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass classify(uint32_t cp) {
  if (is_letter(cp)) return CharClass::kLetter;
  if (is_number(cp)) return CharClass::kNumber;
  if (is_whitespace(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

}  // namespace

std::vector<std::string_view> gpt2_split(std::string_view text) {
  std::vector<std::string_view> pieces;
  const size_t n = text.size();
  // Peeks at the code point at `pos` without moving: (cp, end).
  auto peek = [&](size_t pos, size_t* end) {
    *end = pos;
    return utf8_next(text, end);
  };
  size_t i = 0;
  while (i < n) {
    size_t after = 0;
    const uint32_t c = peek(i, &after);
    // 's 't 're 've 'm 'll 'd (case-sensitive, as in GPT-2).
    if (c == '\'' && i + 1 < n) {
      const char a = text[i + 1], b = i + 2 < n ? text[i + 2] : '\0';
      size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd')
        len = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        len = 3;
      if (len > 0) {
        pieces.push_back(text.substr(i, len));
        i += len;
        continue;
      }
    }
    // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional leading space, then a run.
    size_t start = i, run = i;
    uint32_t first = c;
    size_t first_end = after;
    if (c == ' ' && after < n) {
      run = after;
      first = peek(run, &first_end);
    }
    const CharClass cls = classify(first);
    if (cls != CharClass::kSpace) {
      size_t end = first_end;
      while (end < n) {
        size_t next = 0;
        if (classify(peek(end, &next)) != cls) break;
        end = next;
      }
      pieces.push_back(text.substr(start, end - start));
      i = end;
      continue;
    }
    // "\s+(?!\S)|\s+": a whitespace run; when a non-space follows, its last char is left to
    // start the next piece (so " word" keeps its space), unless the run is one char long.
    size_t end = after, last_start = i;
    while (end < n) {
      size_t next = 0;
      if (!is_whitespace(peek(end, &next))) break;
      last_start = end;
      end = next;
    }
    if (end < n && last_start > i) end = last_start;
    pieces.push_back(text.substr(i, end - i));
    i = end;
  }
  return pieces;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteMap& map = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += map.encoded[b];
  return out;
}

bool byte_level_decode(std::string_view text, std::string* bytes) {
  const ByteMap& map = byte_map();
  size_t pos = 0;
  while (pos < text.size()) {
    auto it = map.decoded.find(utf8_next(text, &pos));
    if (it == map.decoded.end()) return false;
    bytes->push_back(static_cast<char>(it->second));
  }
  return true;
}

}  // namespace moex::data
