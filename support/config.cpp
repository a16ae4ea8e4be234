/// \file config.cpp
/// The knob table and its environment reading.
#include "support/config.h"

#include <cstdlib>
#include <sstream>

#include "support/error.h"

namespace kiln {
namespace {
uint64_t g_epoch = 0;

std::vector<Knob> make_table() {
  std::vector<Knob> t;
#define KILN_MAKE_KNOB(field, env, def, doc) t.push_back(Knob{#field, env, def, def, doc});
  KILN_FOR_EACH_KNOB(KILN_MAKE_KNOB)
#undef KILN_MAKE_KNOB
  for (auto& k : t)
    if (const char* v = std::getenv(k.env.c_str())) k.value = v;
  return t;
}

Knob& find(const std::string& name) {
  for (auto& k : knobs())
    if (k.name == name || k.env == name) return k;
  throw UserError("kiln: unknown config knob '" + name + "'");
}
}  // namespace

std::vector<Knob>& knobs() {
  static std::vector<Knob> table = make_table();
  return table;
}

const std::string& knob(const std::string& name) { return find(name).value; }

int64_t knob_int(const std::string& name) {
  const std::string& v = knob(name);
  if (v.empty()) return 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0')
    throw UserError("kiln: knob " + find(name).env + "='" + v + "' is not an integer");
  return x;
}

bool knob_bool(const std::string& name) {
  const std::string& v = knob(name);
  return !(v.empty() || v == "0" || v == "false" || v == "False" || v == "off");
}

void set_knob(const std::string& name, const std::string& value) {
  find(name).value = value;
  ++g_epoch;
}

uint64_t config_epoch() { return g_epoch; }

bool log_enabled(const std::string& stage) {
  std::stringstream ss(knob("log"));
  std::string item;
  while (std::getline(ss, item, ','))
    if (item == stage || item == "all") return true;
  return false;
}

}  // namespace kiln
