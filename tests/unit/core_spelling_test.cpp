// "Did you mean" hints: the known name a typo is closest to, and none for a stranger name.
#include <gtest/gtest.h>

#include "core/spelling.h"

namespace moex {
namespace {

const std::vector<std::string> kFields = {"max_tokens", "temperature", "top_p", "top_k",
                                          "stop",       "seed",        "tp",    "ep"};

TEST(Spelling, FindsTheNameOneOrTwoEditsAway) {
  EXPECT_EQ(closest_name("max_token", kFields), "max_tokens");     // a letter left out
  EXPECT_EQ(closest_name("max_tokenss", kFields), "max_tokens");   // one too many
  EXPECT_EQ(closest_name("temprature", kFields), "temperature");   // left out
  EXPECT_EQ(closest_name("tempreature", kFields), "temperature");  // two letters swapped
  EXPECT_EQ(closest_name("tempratur", kFields), "temperature");    // two edits in a long name
  EXPECT_EQ(closest_name("Max_Tokens", kFields), "max_tokens");    // case
  EXPECT_EQ(closest_name("sed", kFields), "seed");
}

TEST(Spelling, GivesNoHintForStrangersOrTies) {
  EXPECT_EQ(closest_name("colour", kFields), "");
  EXPECT_EQ(closest_name("lr", kFields), "");       // two edits from "tp": too far for a short name
  EXPECT_EQ(closest_name("top_q", kFields), "");    // one edit from both top_p and top_k
  EXPECT_EQ(closest_name("mx_tkns", kFields), "");  // three edits
  EXPECT_EQ(closest_name("stop", {"stop"}), "");    // the name itself is no hint
  EXPECT_EQ(closest_name("anything", {}), "");
}

TEST(Spelling, DidYouMeanIsEmptyOrAParenthesis) {
  EXPECT_EQ(did_you_mean("max_token", kFields), " (did you mean 'max_tokens'?)");
  EXPECT_EQ(did_you_mean("colour", kFields), "");
}

}  // namespace
}  // namespace moex
