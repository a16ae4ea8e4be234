/// \file error.h
/// kiln's error types and the KILN_CHECK family of assertions.
///
/// InternalError: a kiln bug (an invariant broke). UserError: the user's input is wrong.
/// Unsupported: kiln cannot (yet) compile something; the caller runs it eagerly and records
/// the reason. The Python bindings map each to its own exception class.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kiln {

/// A broken invariant inside kiln.
struct InternalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Something the user did wrong (bad argument, bad knob value).
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// kiln cannot compile this; run it eagerly and say why.
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace kiln

#define KILN_CHECK(cond, ...)                                                                  \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::kiln::InternalError(fmt::format("kiln internal error at {}:{}: {} ({})", __FILE__, \
                                              __LINE__, fmt::format(__VA_ARGS__), #cond));     \
  } while (0)

#define KILN_UNSUPPORTED_IF(cond, ...)                                    \
  do {                                                                    \
    if (cond) throw ::kiln::Unsupported(fmt::format(__VA_ARGS__));        \
  } while (0)

#define KILN_UNREACHABLE(msg) \
  throw ::kiln::InternalError(fmt::format("kiln unreachable at {}:{}: {}", __FILE__, __LINE__, msg))
