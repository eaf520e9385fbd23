// tvm_cpp_check: run a Relax VM executable exported by `tvm.compile(...).export_library()`
// on .npy inputs from C++, using only the tvm_ffi headers and the TVM runtime shared libraries.
//
// Usage: see Usage() below or cpp_check/README.md. Exit codes: 0 ok, 2 usage error,
// 3 input/output file error, 4 module load error, 5 run error.
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "npy.h"

namespace ffi = tvm::ffi;
namespace fs = std::filesystem;

namespace {

enum ExitCode : int {
  kExitOk = 0,
  kExitUsage = 2,
  kExitFile = 3,
  kExitLoad = 4,
  kExitRun = 5,
};

/*! \brief Error that ends the program with a given exit code and message. */
struct Failure {
  int code;
  std::string message;
  bool show_usage;
};

[[noreturn]] void Fail(int code, const std::string& message) {
  throw Failure{code, message, false};
}

/*! \brief A bad command line: like Fail(kExitUsage, ...) but also prints the usage text. */
[[noreturn]] void UsageError(const std::string& message) {
  throw Failure{kExitUsage, message, true};
}

const char* const kProg = "tvm_cpp_check";

std::string Usage() {
  return std::string("usage: ") + kProg +
         " --module MODULE.so [--input NAME=FILE.npy ...] [FILE.npy ...] --out-dir DIR\n"
         "                     [--repeat N] [--device-alloc pooled|naive]\n"
         "  --module PATH        .so exported by tvm.compile(...).export_library()\n"
         "  --input NAME=PATH    input for the parameter NAME of `main` (repeatable)\n"
         "  --input PATH, PATH   inputs by position, in the order of `main`'s parameters\n"
         "  --out-dir DIR        where output_<i>.npy and result.json are written\n"
         "  --repeat N           call main N times (default 1); outputs of the last call\n"
         "  --device-alloc KIND  VM memory allocator: pooled (default) or naive\n"
         "exit codes: 0 ok, 2 usage, 3 input/output file, 4 module load, 5 run error\n";
}

struct Options {
  std::string module_path;
  std::vector<std::pair<std::string, std::string>> named_inputs;  // name -> path
  std::vector<std::string> positional_inputs;
  std::string out_dir;
  int repeat = 1;
  int allocator = 2;  // 1 naive, 2 pooled (tvm::runtime::memory::AllocatorType)
};

Options ParseArgs(int argc, char** argv) {
  Options opt;
  bool have_out = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << Usage();
      std::exit(kExitOk);
    }
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      if (arg == "--") {
        for (++i; i < argc; ++i) opt.positional_inputs.emplace_back(argv[i]);
        break;
      }
      opt.positional_inputs.push_back(arg);
      continue;
    }
    std::string key = arg, value;
    bool inline_value = false;
    std::size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inline_value = true;
    }
    if (key != "--module" && key != "--input" && key != "--out-dir" && key != "--repeat" &&
        key != "--device-alloc") {
      UsageError("unknown option '" + key + "'");
    }
    if (!inline_value) {
      if (i + 1 >= argc) UsageError("option '" + key + "' needs a value");
      value = argv[++i];
    }
    if (key == "--module") {
      opt.module_path = value;
    } else if (key == "--input") {
      std::size_t sep = value.find('=');
      if (sep == std::string::npos) {
        opt.positional_inputs.push_back(value);
      } else {
        std::string name = value.substr(0, sep);
        if (name.empty()) UsageError("--input '" + value + "': empty input name");
        for (const auto& kv : opt.named_inputs) {
          if (kv.first == name) UsageError("input '" + name + "' given more than once");
        }
        opt.named_inputs.emplace_back(name, value.substr(sep + 1));
      }
    } else if (key == "--out-dir") {
      opt.out_dir = value;
      have_out = true;
    } else if (key == "--repeat") {
      char* end = nullptr;
      long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 1 || n > 1000000) {
        UsageError("--repeat '" + value + "': expected an integer >= 1");
      }
      opt.repeat = static_cast<int>(n);
    } else if (key == "--device-alloc") {
      if (value == "pooled") {
        opt.allocator = 2;
      } else if (value == "naive") {
        opt.allocator = 1;
      } else {
        UsageError("--device-alloc '" + value + "': expected 'pooled' or 'naive'");
      }
    }
  }
  if (opt.module_path.empty()) UsageError("missing --module");
  if (!have_out || opt.out_dir.empty()) UsageError("missing --out-dir");
  if (!opt.named_inputs.empty() && !opt.positional_inputs.empty()) {
    UsageError("give inputs either all by name (--input NAME=PATH) or all by position");
  }
  return opt;
}

// ---------------------------------------------------------------------------------------------
// Fatal signals: say in which phase the process died, then let the previous handler (tvm_ffi's
// backtrace printer or the default action) finish the job.

volatile const char* g_phase = "starting";
struct sigaction g_old_actions[32];
const int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

void WriteStderr(const char* s) {
  ssize_t ignored = write(STDERR_FILENO, s, std::strlen(s));
  (void)ignored;
}

void FatalSignalHandler(int sig) {
  WriteStderr(kProg);
  WriteStderr(": fatal signal ");
  const char* name = sig == SIGSEGV  ? "SIGSEGV"
                     : sig == SIGBUS ? "SIGBUS"
                     : sig == SIGFPE ? "SIGFPE"
                     : sig == SIGILL ? "SIGILL"
                                     : "SIGABRT";
  WriteStderr(name);
  WriteStderr(" while ");
  WriteStderr(const_cast<const char*>(g_phase));
  WriteStderr("\n");
  // Restore the previous action; a faulting instruction re-executes and faults again, abort()
  // raises again, either way the previous handler / default action runs next.
  sigaction(sig, &g_old_actions[sig], nullptr);
  if (sig == SIGFPE || sig == SIGILL) {
    // These may be raised synchronously by kill(); make sure the process still dies.
    raise(sig);
  }
}

void InstallSignalHandlers() {
  for (int sig : kFatalSignals) {
    struct sigaction act;
    std::memset(&act, 0, sizeof(act));
    act.sa_handler = FatalSignalHandler;
    sigemptyset(&act.sa_mask);
    sigaction(sig, &act, &g_old_actions[sig]);
  }
}

// ---------------------------------------------------------------------------------------------
// dtype mapping between .npy and DLPack

DLDataType ToDL(npy::DType dt) {
  DLDataType out;
  out.lanes = 1;
  out.bits = static_cast<uint8_t>(dt.itemsize * 8);
  switch (dt.kind) {
    case npy::Kind::kFloat: out.code = kDLFloat; break;
    case npy::Kind::kInt: out.code = kDLInt; break;
    case npy::Kind::kUInt: out.code = kDLUInt; break;
    case npy::Kind::kBool: out.code = kDLBool; break;
  }
  return out;
}

std::string DLName(DLDataType dt) {
  std::string base;
  switch (dt.code) {
    case kDLFloat: base = "float"; break;
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLBool: base = "bool"; break;
    case kDLBfloat: base = "bfloat"; break;
    default: base = "code" + std::to_string(dt.code) + "_"; break;
  }
  std::string s = dt.code == kDLBool ? base : base + std::to_string(dt.bits);
  if (dt.lanes != 1) s += "x" + std::to_string(dt.lanes);
  return s;
}

bool FromDL(DLDataType dt, npy::DType* out) {
  if (dt.lanes != 1) return false;
  if (dt.code == kDLBool && dt.bits == 8) {
    *out = {npy::Kind::kBool, 1};
    return true;
  }
  if (dt.code == kDLUInt && dt.bits == 1) {  // TVM's 1-bit bool is stored one byte per element
    *out = {npy::Kind::kBool, 1};
    return true;
  }
  int bytes = dt.bits / 8;
  bool pow2 = dt.bits % 8 == 0 && (bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8);
  if (!pow2) return false;
  if (dt.code == kDLFloat && bytes >= 2) {
    *out = {npy::Kind::kFloat, bytes};
    return true;
  }
  if (dt.code == kDLInt) {
    *out = {npy::Kind::kInt, bytes};
    return true;
  }
  if (dt.code == kDLUInt) {
    *out = {npy::Kind::kUInt, bytes};
    return true;
  }
  return false;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Inputs

/*! \brief NDAlloc for FromNDAlloc that lends an already filled, 64-byte aligned buffer. */
struct LentBuffer {
  std::shared_ptr<uint8_t> buffer;
  void AllocData(DLTensor* tensor) { tensor->data = buffer.get(); }
  void FreeData(DLTensor* tensor) { tensor->data = nullptr; }  // buffer freed with this object
};

struct Input {
  std::string name;  // parameter name (filled once the module is loaded)
  std::string path;
  npy::Array array;
};

ffi::Tensor ToTensor(const npy::Array& arr) {
  DLDevice cpu{kDLCPU, 0};
  return ffi::Tensor::FromNDAlloc(LentBuffer{arr.data},
                                  ffi::ShapeView(arr.shape.data(), arr.shape.size()),
                                  ToDL(arr.dtype), cpu);
}

// ---------------------------------------------------------------------------------------------
// Outputs

struct Output {
  npy::DType dtype;
  std::vector<int64_t> shape;
  std::shared_ptr<uint8_t> data;
  std::size_t nbytes;
};

std::string PathStr(const std::vector<int>& where) {
  std::string s = "output";
  for (int i : where) s += "[" + std::to_string(i) + "]";
  return s;
}

Output CopyTensor(const ffi::Tensor& tensor, const std::vector<int>& where) {
  const DLTensor* dl = tensor.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) {
    Fail(kExitRun, PathStr(where) + " is on device type " +
                       std::to_string(dl->device.device_type) + ", expected CPU");
  }
  Output out;
  if (!FromDL(dl->dtype, &out.dtype)) {
    Fail(kExitRun, PathStr(where) + " has dtype " + DLName(dl->dtype) +
                       " which cannot be written to .npy by this tool");
  }
  out.shape.assign(dl->shape, dl->shape + dl->ndim);
  int64_t numel = 1;
  for (int64_t d : out.shape) numel *= d;
  const std::size_t item = static_cast<std::size_t>(out.dtype.itemsize);
  out.nbytes = static_cast<std::size_t>(numel) * item;
  out.data = npy::AllocAligned(out.nbytes);
  if (numel == 0) return out;
  const uint8_t* base = static_cast<const uint8_t*>(dl->data) + dl->byte_offset;
  if (dl->strides == nullptr || ffi::IsContiguous(*dl)) {
    std::memcpy(out.data.get(), base, out.nbytes);
    return out;
  }
  // Strided gather into C order.
  std::vector<int64_t> index(out.shape.size(), 0);
  uint8_t* dst = out.data.get();
  for (int64_t n = 0; n < numel; ++n) {
    int64_t offset = 0;
    for (std::size_t d = 0; d < index.size(); ++d) offset += index[d] * dl->strides[d];
    std::memcpy(dst + n * item, base + offset * static_cast<int64_t>(item), item);
    for (int d = static_cast<int>(index.size()) - 1; d >= 0; --d) {
      if (++index[d] < out.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

template <typename T>
Output Scalar(npy::DType dtype, T value, std::vector<int64_t> shape = {}) {
  Output out{dtype, std::move(shape), npy::AllocAligned(sizeof(T)), sizeof(T)};
  std::memcpy(out.data.get(), &value, sizeof(T));
  return out;
}

void Flatten(const ffi::Any& value, std::vector<int>* where, std::vector<Output>* outs) {
  const int32_t index = value.type_index();
  if (index == ffi::TypeIndex::kTVMFFITensor) {
    outs->push_back(CopyTensor(value.cast<ffi::Tensor>(), *where));
  } else if (index == ffi::TypeIndex::kTVMFFIArray) {
    ffi::Array<ffi::Any> items = value.cast<ffi::Array<ffi::Any>>();
    for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
      where->push_back(static_cast<int>(i));
      Flatten(items[i], where, outs);
      where->pop_back();
    }
  } else if (index == ffi::TypeIndex::kTVMFFIShape) {
    ffi::Shape shape = value.cast<ffi::Shape>();
    Output out{{npy::Kind::kInt, 8},
               {static_cast<int64_t>(shape.size())},
               npy::AllocAligned(shape.size() * 8),
               shape.size() * 8};
    for (std::size_t i = 0; i < shape.size(); ++i) {
      int64_t v = shape[i];
      std::memcpy(out.data.get() + 8 * i, &v, 8);
    }
    outs->push_back(std::move(out));
  } else if (index == ffi::TypeIndex::kTVMFFIInt) {
    outs->push_back(Scalar<int64_t>({npy::Kind::kInt, 8}, value.cast<int64_t>()));
  } else if (index == ffi::TypeIndex::kTVMFFIFloat) {
    outs->push_back(Scalar<double>({npy::Kind::kFloat, 8}, value.cast<double>()));
  } else if (index == ffi::TypeIndex::kTVMFFIBool) {
    outs->push_back(Scalar<uint8_t>({npy::Kind::kBool, 1}, value.cast<bool>() ? 1 : 0));
  } else {
    Fail(kExitRun, PathStr(*where) + " has unsupported type '" + value.GetTypeKey() +
                       "' (expected tensors, tuples of tensors, shapes or scalars)");
  }
}

// ---------------------------------------------------------------------------------------------

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string FormatSeconds(double s) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", s);
  return buf;
}

std::string DescribeFfiError(const ffi::Error& e) { return e.kind() + ": " + e.message(); }

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

ffi::Function GetVmFunction(const ffi::Module& vm, const std::string& name,
                            const std::string& module_path) {
  ffi::Optional<ffi::Function> f = vm->GetFunction(name);
  if (!f.has_value()) {
    Fail(kExitLoad, module_path + ": the Relax VM has no function '" + name + "'");
  }
  return *f;
}

int Run(const Options& opt) {
  using Clock = std::chrono::steady_clock;

  // 1. Read inputs (exit 3 on any file problem).
  g_phase = "reading inputs";
  std::vector<Input> inputs;
  for (const auto& kv : opt.named_inputs) inputs.push_back(Input{kv.first, kv.second, {}});
  for (const auto& p : opt.positional_inputs) inputs.push_back(Input{"", p, {}});
  for (Input& in : inputs) {
    try {
      in.array = npy::Read(in.path);
    } catch (const npy::NpyError& e) {
      std::string who = in.name.empty() ? "input" : "input '" + in.name + "'";
      Fail(kExitFile, who + ": " + e.what());
    }
  }
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec || !fs::is_directory(opt.out_dir)) {
    Fail(kExitFile, opt.out_dir + ": cannot create output directory: " + ec.message());
  }

  // 2. Load the module and create the VM (exit 4).
  g_phase = "loading the module";
  fs::path module_abs = fs::absolute(opt.module_path, ec);
  if (ec) Fail(kExitLoad, opt.module_path + ": " + ec.message());
  if (!fs::is_regular_file(module_abs, ec)) {
    Fail(kExitLoad, module_abs.string() + ": module file does not exist or is not a file");
  }
  const std::string module_path = module_abs.string();
  const auto t_load0 = Clock::now();
  std::optional<ffi::Module> vm_holder;  // keeps the VM (and the library it uses) alive
  std::optional<ffi::Function> main_fn;
  int64_t arity = 0;
  std::vector<std::string> param_names;
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(module_path);
    ffi::Optional<ffi::Function> load_exec = lib->GetFunction("vm_load_executable");
    if (!load_exec.has_value()) {
      Fail(kExitLoad, module_path +
                          ": not a Relax VM executable (no 'vm_load_executable'; export it with "
                          "tvm.compile(...).export_library())");
    }
    vm_holder = (*load_exec)().cast<ffi::Module>();
    const ffi::Module& vm = *vm_holder;
    g_phase = "initializing the VM";
    GetVmFunction(vm, "vm_initialization", module_path)(static_cast<int>(kDLCPU), 0,
                                                         opt.allocator);
    main_fn = GetVmFunction(vm, "main", module_path);
    arity = GetVmFunction(vm, "get_function_arity", module_path)("main").cast<int64_t>();
    ffi::Function param_name = GetVmFunction(vm, "get_function_param_name", module_path);
    for (int64_t i = 0; i < arity; ++i) {
      param_names.push_back(std::string(param_name("main", i).cast<ffi::String>()));
    }
  } catch (const ffi::Error& e) {
    Fail(kExitLoad, module_path + ": cannot load the module: " + DescribeFfiError(e));
  } catch (const std::exception& e) {
    Fail(kExitLoad, module_path + ": cannot load the module: " + e.what());
  }
  const double load_seconds = Seconds(t_load0, Clock::now());

  // 3. Match inputs to parameters (exit 2).
  std::string params_list;
  for (std::size_t i = 0; i < param_names.size(); ++i) {
    params_list += (i ? ", " : "") + param_names[i];
  }
  params_list = "main(" + params_list + ")";
  std::vector<const Input*> ordered(param_names.size(), nullptr);
  if (!opt.named_inputs.empty()) {
    for (const Input& in : inputs) {
      std::size_t k = 0;
      while (k < param_names.size() && param_names[k] != in.name) ++k;
      if (k == param_names.size()) {
        Fail(kExitUsage, "input '" + in.name + "' (" + in.path + ") is not a parameter of " +
                             params_list);
      }
      ordered[k] = &in;
    }
    for (std::size_t k = 0; k < ordered.size(); ++k) {
      if (ordered[k] == nullptr) {
        Fail(kExitUsage, "no input given for parameter '" + param_names[k] + "' of " + params_list);
      }
    }
  } else {
    if (inputs.size() != param_names.size()) {
      Fail(kExitUsage, std::to_string(inputs.size()) + " input(s) given but " + params_list +
                           " takes " + std::to_string(param_names.size()));
    }
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      inputs[k].name = param_names[k];
      ordered[k] = &inputs[k];
    }
  }

  // 4. Run (exit 5).
  std::vector<ffi::Tensor> tensors;
  std::vector<ffi::AnyView> args;
  for (const Input* in : ordered) tensors.push_back(ToTensor(in->array));
  for (const ffi::Tensor& t : tensors) args.emplace_back(t);
  std::vector<double> call_seconds;
  std::vector<Output> outputs;
  g_phase = "running main";
  try {
    ffi::Any result;
    for (int r = 0; r < opt.repeat; ++r) {
      result = ffi::Any();
      const auto t0 = Clock::now();
      main_fn->CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
      call_seconds.push_back(Seconds(t0, Clock::now()));
    }
    g_phase = "reading outputs";
    std::vector<int> where;
    Flatten(result, &where, &outputs);
  } catch (const ffi::Error& e) {
    std::string desc;
    for (const Input* in : ordered) {
      desc += "\n  " + in->name + " = " + in->path + ": " + npy::Name(in->array.dtype) +
              ShapeStr(in->array.shape);
    }
    Fail(kExitRun, module_path + ": " + params_list + " failed: " + DescribeFfiError(e) +
                       "\ninputs:" + desc);
  } catch (const std::exception& e) {
    Fail(kExitRun, module_path + ": " + params_list + " failed: " + e.what());
  }

  // 5. Write outputs (exit 3).
  g_phase = "writing outputs";
  std::vector<std::string> names;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const Output& o = outputs[i];
    std::string name = "output_" + std::to_string(i) + ".npy";
    try {
      npy::Write((fs::path(opt.out_dir) / name).string(), o.dtype, o.shape, o.data.get(), o.nbytes);
    } catch (const npy::NpyError& e) {
      Fail(kExitFile, std::string("writing ") + name + ": " + e.what());
    }
    names.push_back(name);
  }
  std::ostringstream json;
  json << "{\"load_seconds\": " << FormatSeconds(load_seconds) << ", \"call_seconds\": [";
  for (std::size_t i = 0; i < call_seconds.size(); ++i) {
    json << (i ? ", " : "") << FormatSeconds(call_seconds[i]);
  }
  json << "], \"outputs\": [";
  for (std::size_t i = 0; i < names.size(); ++i) {
    json << (i ? ", " : "") << "\"" << JsonEscape(names[i]) << "\"";
  }
  json << "], \"params\": [";
  for (std::size_t i = 0; i < param_names.size(); ++i) {
    json << (i ? ", " : "") << "\"" << JsonEscape(param_names[i]) << "\"";
  }
  json << "]}\n";
  const fs::path result_path = fs::path(opt.out_dir) / "result.json";
  const fs::path tmp_path = fs::path(opt.out_dir) / "result.json.tmp";
  {
    std::ofstream out(tmp_path, std::ios::trunc);
    out << json.str();
    out.close();
    if (!out) Fail(kExitFile, tmp_path.string() + ": write failed: " + std::strerror(errno));
  }
  fs::rename(tmp_path, result_path, ec);
  if (ec) Fail(kExitFile, result_path.string() + ": cannot write: " + ec.message());
  g_phase = "exiting";
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  InstallSignalHandlers();
  try {
    Options opt = ParseArgs(argc, argv);
    return Run(opt);
  } catch (const Failure& f) {
    std::cerr << kProg << ": error: " << f.message << "\n";
    if (f.show_usage) std::cerr << Usage();
    return f.code;
  } catch (const ffi::Error& e) {
    std::cerr << kProg << ": error: unexpected TVM error: " << DescribeFfiError(e) << "\n";
    return kExitRun;
  } catch (const std::exception& e) {
    std::cerr << kProg << ": error: unexpected error: " << e.what() << "\n";
    return kExitRun;
  }
}
