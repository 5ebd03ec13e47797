#include "data/html_text.h"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <map>

#include "data/unicode.h"

namespace moex::data {

namespace {

bool is_block(const std::string& tag) {
  static const char* kBlocks[] = {"p",  "div", "h1",         "h2",      "h3",   "h4", "h5",    "h6",
                                  "li", "pre", "dt",         "dd",      "tr",   "br", "table", "ul",
                                  "ol", "dl",  "blockquote", "section", "body", "td", "th"};
  for (const char* b : kBlocks) {
    if (tag == b) return true;
  }
  return false;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The value of attribute `name` in a tag's text, or "".
std::string attribute(const std::string& tag_text, const std::string& name) {
  size_t pos = 0;
  while ((pos = tag_text.find(name, pos)) != std::string::npos) {
    const bool word_start = pos > 0 && std::isspace(static_cast<unsigned char>(tag_text[pos - 1]));
    size_t p = pos + name.size();
    while (p < tag_text.size() && std::isspace(static_cast<unsigned char>(tag_text[p]))) ++p;
    if (word_start && p < tag_text.size() && tag_text[p] == '=') {
      ++p;
      while (p < tag_text.size() && std::isspace(static_cast<unsigned char>(tag_text[p]))) ++p;
      if (p < tag_text.size() && (tag_text[p] == '"' || tag_text[p] == '\'')) {
        const char q = tag_text[p];
        const size_t end = tag_text.find(q, p + 1);
        if (end != std::string::npos) return tag_text.substr(p + 1, end - p - 1);
      }
    }
    pos += name.size();
  }
  return "";
}

bool skipped_element(const std::string& tag, const std::string& tag_text) {
  if (tag == "head" || tag == "script" || tag == "style") return true;
  const std::string cls = attribute(tag_text, "class");
  if (cls.find("docnav") != std::string::npos) return true;
  const std::string id = attribute(tag_text, "id");
  return id == "banner" || id == "title";
}

// Collapses runs of whitespace to one space and trims.
std::string collapse(const std::string& s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
    } else {
      if (space) out.push_back(' ');
      space = false;
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

std::string decode_html_entities(std::string_view text) {
  static const std::map<std::string, uint32_t> kNamed = {
      {"amp", '&'},     {"lt", '<'},       {"gt", '>'},       {"quot", '"'},      {"apos", '\''},
      {"nbsp", 0xA0},   {"mdash", 0x2014}, {"ndash", 0x2013}, {"hellip", 0x2026}, {"laquo", 0xAB},
      {"raquo", 0xBB},  {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C},  {"rdquo", 0x201D},
      {"copy", 0xA9},   {"reg", 0xAE},     {"trade", 0x2122}, {"eacute", 0xE9},   {"egrave", 0xE8},
      {"agrave", 0xE0}, {"ccedil", 0xE7},  {"uuml", 0xFC},    {"ouml", 0xF6},     {"auml", 0xE4},
      {"szlig", 0xDF},  {"ntilde", 0xF1},  {"middot", 0xB7},  {"bull", 0x2022},   {"rarr", 0x2192}};
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '&') {
      out.push_back(text[i]);
      continue;
    }
    const size_t semi = text.find(';', i + 1);
    if (semi == std::string_view::npos || semi - i > 12) {
      out.push_back('&');
      continue;
    }
    const std::string name(text.substr(i + 1, semi - i - 1));
    uint32_t cp = 0;
    bool ok = false;
    if (name.size() > 1 && name[0] == '#') {
      char* end = nullptr;
      const bool hex = name[1] == 'x' || name[1] == 'X';
      const std::string digits = name.substr(hex ? 2 : 1);
      cp = static_cast<uint32_t>(std::strtoul(digits.c_str(), &end, hex ? 16 : 10));
      ok = !digits.empty() && end && *end == '\0' && cp > 0 && cp < 0x110000;
    } else {
      auto it = kNamed.find(name);
      ok = it != kNamed.end();
      if (ok) cp = it->second;
    }
    if (!ok) {
      out.push_back('&');
      continue;
    }
    utf8_append(cp == 0xA0 ? ' ' : cp, &out);
    i = semi;
  }
  return out;
}

std::vector<std::string> html_paragraphs(std::string_view html) {
  std::vector<std::string> paragraphs;
  std::string current;
  std::string skip_tag;  // the element being skipped, and how deep inside it we are
  int skip_depth = 0;
  auto flush = [&] {
    std::string p = collapse(decode_html_entities(current));
    if (!p.empty()) paragraphs.push_back(std::move(p));
    current.clear();
  };
  size_t i = 0;
  while (i < html.size()) {
    if (html[i] != '<') {
      const size_t next = html.find('<', i);
      const size_t end = next == std::string_view::npos ? html.size() : next;
      if (skip_depth == 0) current.append(html.substr(i, end - i));
      i = end;
      continue;
    }
    if (html.compare(i, 4, "<!--") == 0) {  // comment
      const size_t end = html.find("-->", i + 4);
      i = end == std::string_view::npos ? html.size() : end + 3;
      continue;
    }
    const size_t close = html.find('>', i);
    if (close == std::string_view::npos) break;
    const std::string tag_text(html.substr(i + 1, close - i - 1));
    i = close + 1;
    if (tag_text.empty() || tag_text[0] == '!' || tag_text[0] == '?') continue;
    const bool closing = tag_text[0] == '/';
    const bool self_closing = tag_text.back() == '/';
    size_t n = closing ? 1 : 0;
    while (n < tag_text.size() &&
           (std::isalnum(static_cast<unsigned char>(tag_text[n])) || tag_text[n] == ':'))
      ++n;
    const std::string tag = lower(tag_text.substr(closing ? 1 : 0, n - (closing ? 1 : 0)));
    if (skip_depth > 0) {
      if (tag == skip_tag && !self_closing) skip_depth += closing ? -1 : 1;
      continue;
    }
    if (!closing && !self_closing && skipped_element(tag, tag_text)) {
      flush();
      skip_tag = tag;
      skip_depth = 1;
      continue;
    }
    if (is_block(tag)) {
      flush();
    } else if (tag == "td" || tag == "th") {
      current.push_back(' ');
    }
  }
  flush();
  return paragraphs;
}

}  // namespace moex::data
