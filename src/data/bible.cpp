#include "data/bible.h"

#include <sys/wait.h>

#include <cctype>
#include <cstdio>

#include "core/error.h"
#include "core/stop_signals.h"

namespace moex::data {

namespace {

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// "Book C:V: rest" -> true with the parts; book names are letters, spaces and parentheses
// ("I Kings", "Esther (Greek)").
bool parse_verse_start(std::string_view line, Verse* v, std::string_view* rest) {
  size_t pos = 0;
  while ((pos = line.find(':', pos)) != std::string_view::npos) {
    const size_t sp = line.rfind(' ', pos);
    const size_t colon2 = line.find(':', pos + 1);
    if (sp != std::string_view::npos && sp > 0 && colon2 != std::string_view::npos) {
      const std::string_view ch = line.substr(sp + 1, pos - sp - 1);
      const std::string_view vs = line.substr(pos + 1, colon2 - pos - 1);
      const std::string_view book = line.substr(0, sp);
      bool book_ok = std::isupper(static_cast<unsigned char>(book[0]));
      for (char c : book)
        book_ok = book_ok && (std::isalpha(static_cast<unsigned char>(c)) || c == ' ' || c == '(' ||
                              c == ')' || (c & 0x80));
      if (book_ok && all_digits(ch) && all_digits(vs) && ch.size() < 4 && vs.size() < 4) {
        v->book = std::string(book);
        v->chapter = std::stoi(std::string(ch));
        v->verse = std::stoi(std::string(vs));
        *rest = line.substr(colon2 + 1);
        return true;
      }
    }
    // Only the first "N:N:" can be the key; later colons are text.
    if (pos > 40) return false;
    ++pos;
  }
  return false;
}

std::string clean(const std::string& s) {
  std::string out;
  bool space = false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') {
      const size_t end = s.find('>', i);
      if (end != std::string::npos) {
        i = end;
        space = space || !out.empty();
        continue;
      }
    }
    if (std::isspace(static_cast<unsigned char>(s[i]))) {
      space = !out.empty();
      continue;
    }
    // No space before punctuation that followed a removed tag ("God <H0430>, ...").
    if (space &&
        !(s[i] == ',' || s[i] == '.' || s[i] == ';' || s[i] == ':' || s[i] == '?' || s[i] == '!')) {
      out.push_back(' ');
    }
    space = false;
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

std::string Verse::key() const {
  return book + " " + std::to_string(chapter) + ":" + std::to_string(verse);
}

std::vector<Verse> parse_diatheke_plain(std::string_view text) {
  std::vector<Verse> verses;
  std::string current_text;
  std::string pending;  // lines after a blank line: a heading of the next verse, or more poetry
  Verse current;
  bool have = false;
  bool after_blank = false;
  auto flush = [&] {
    if (!have) return;
    current.text = clean(current_text);
    if (!current.text.empty()) verses.push_back(current);
    current_text.clear();
    have = false;
  };
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back())))
      line.remove_suffix(1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front())))
      line.remove_prefix(1);
    if (line.empty()) {
      after_blank = true;
      continue;
    }
    Verse v;
    std::string_view rest;
    if (parse_verse_start(line, &v, &rest)) {
      flush();
      current = v;
      // A heading (a psalm's title) printed before the verse key belongs to this verse.
      current_text = pending.empty() ? std::string(rest) : pending + " " + std::string(rest);
      pending.clear();
      have = true;
    } else if (line.front() == '(' && line.back() == ')' &&
               line.find(' ') == std::string_view::npos) {
      pending.clear();  // after the last verse: appendices (WEB's glossary), not verse text
      flush();          // "(engWEB2015eb)": the module trailer
    } else if (after_blank || !pending.empty()) {
      pending += (pending.empty() ? "" : " ") + std::string(line);
    } else if (have) {
      current_text.push_back(' ');
      current_text.append(line);
    }
    after_blank = false;
  }
  flush();
  return verses;
}

std::string export_sword_module(const std::string& module) {
  for (char c : module) {
    MOEX_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-',
               "sword module name '", module, "' has characters that are not allowed");
  }
  const std::string cmd =
      "diatheke -b " + module + " -f plain -k 'Genesis 1:1-Revelation 22:21' 2>/dev/null";
  FILE* pipe = nullptr;
  {
    const StopSignalsUnblocked unblocked;  // so that Ctrl-C and SIGTERM reach diatheke too
    pipe = ::popen(cmd.c_str(), "r");
  }
  MOEX_CHECK(pipe != nullptr, "cannot run diatheke (install the diatheke package)");
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = ::pclose(pipe);
  MOEX_CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 127,
             "diatheke is not installed (apt-get install diatheke)");
  MOEX_CHECK(out.size() > 1000, "sword module ", module,
             ": diatheke printed no verses; is its sword-text-* package installed?");
  return out;
}

}  // namespace moex::data
