// .npy reader/writer, see npy.h.
#include "npy.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace npy {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;

bool HostIsLittleEndian() {
  const uint16_t one = 1;
  uint8_t first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

[[noreturn]] void Fail(const std::string& path, const std::string& cause) {
  throw NpyError(path + ": " + cause);
}

/*! \brief Tiny parser for the Python dict literal in a .npy header. */
class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  void Parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    Expect('{');
    while (true) {
      SkipSpace();
      if (Peek() == '}') break;
      std::string key = ParseString();
      Expect(':');
      SkipSpace();
      if (key == "descr") {
        if (Peek() != '\'' && Peek() != '"') {
          Fail(path_, "unsupported dtype: structured/record arrays are not supported (descr is not "
                      "a simple type string)");
        }
        *descr = ParseString();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = ParseBool();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = ParseShape();
        have_shape = true;
      } else {
        Fail(path_, "malformed .npy header: unexpected key '" + key + "'");
      }
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      SkipSpace();
      if (Peek() != '}') Fail(path_, "malformed .npy header: expected ',' or '}'");
    }
    if (!have_descr || !have_fortran || !have_shape) {
      Fail(path_, "malformed .npy header: needs 'descr', 'fortran_order' and 'shape'");
    }
  }

 private:
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  void Expect(char c) {
    SkipSpace();
    if (Peek() != c) Fail(path_, std::string("malformed .npy header: expected '") + c + "'");
    ++pos_;
  }
  std::string ParseString() {
    SkipSpace();
    char quote = Peek();
    if (quote != '\'' && quote != '"') Fail(path_, "malformed .npy header: expected a string");
    ++pos_;
    std::size_t end = s_.find(quote, pos_);
    if (end == std::string::npos) Fail(path_, "malformed .npy header: unterminated string");
    std::string out = s_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }
  bool ParseBool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    Fail(path_, "malformed .npy header: fortran_order is not True/False");
  }
  std::vector<int64_t> ParseShape() {
    std::vector<int64_t> shape;
    Expect('(');
    while (true) {
      SkipSpace();
      if (Peek() == ')') {
        ++pos_;
        break;
      }
      if (!std::isdigit(static_cast<unsigned char>(Peek()))) {
        Fail(path_, "malformed .npy header: shape must be a tuple of non-negative integers");
      }
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(Peek()))) {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) {
          Fail(path_, "malformed .npy header: shape dimension too large");
        }
        v = v * 10 + (s_[pos_++] - '0');
      }
      if (Peek() == 'L') ++pos_;  // Python 2 long suffix
      shape.push_back(v);
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
      } else if (Peek() != ')') {
        Fail(path_, "malformed .npy header: expected ',' or ')' in shape");
      }
    }
    return shape;
  }

  const std::string& path_;
  const std::string& s_;
  std::size_t pos_ = 0;
};

DType ParseDescr(const std::string& path, const std::string& descr) {
  const std::string supported =
      "supported: float16/32/64, int8/16/32/64, uint8/16/32/64, bool (little-endian)";
  if (descr.size() < 2) Fail(path, "unsupported dtype '" + descr + "' (" + supported + ")");
  char order = descr[0];
  char code = descr[1];
  std::string size_str = descr.substr(2);
  int itemsize = 0;
  if (code == '?' && size_str.empty()) {
    itemsize = 1;
  } else {
    if (size_str.empty() || size_str.size() > 2 ||
        size_str.find_first_not_of("0123456789") != std::string::npos) {
      Fail(path, "unsupported dtype '" + descr + "' (" + supported + ")");
    }
    itemsize = std::atoi(size_str.c_str());
  }
  if (order == '>' && itemsize > 1) {
    Fail(path, "unsupported dtype '" + descr + "': big-endian data (" + supported + ")");
  }
  if (order == '=' && !HostIsLittleEndian()) {
    Fail(path, "unsupported dtype '" + descr + "': native order on a big-endian host");
  }
  if (order != '<' && order != '|' && order != '=' && order != '>') {
    Fail(path, "unsupported dtype '" + descr + "': unknown byte order '" + order + "'");
  }
  DType dt{Kind::kFloat, itemsize};
  switch (code) {
    case 'f':
      dt.kind = Kind::kFloat;
      if (itemsize == 2 || itemsize == 4 || itemsize == 8) return dt;
      break;
    case 'i':
      dt.kind = Kind::kInt;
      if (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8) return dt;
      break;
    case 'u':
      dt.kind = Kind::kUInt;
      if (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8) return dt;
      break;
    case 'b':
    case '?':
      dt.kind = Kind::kBool;
      if (itemsize == 1) return dt;
      break;
    default:
      break;
  }
  Fail(path, "unsupported dtype '" + descr + "' (" + supported + ")");
}

}  // namespace

std::shared_ptr<uint8_t> AllocAligned(std::size_t nbytes) {
  std::size_t size = nbytes == 0 ? kAlignment : (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  void* ptr = std::aligned_alloc(kAlignment, size);
  if (ptr == nullptr) throw std::bad_alloc();
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(ptr), [](uint8_t* p) { std::free(p); });
}

int64_t Array::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string Descr(DType dtype) {
  char code = 'f';
  switch (dtype.kind) {
    case Kind::kFloat: code = 'f'; break;
    case Kind::kInt: code = 'i'; break;
    case Kind::kUInt: code = 'u'; break;
    case Kind::kBool: code = 'b'; break;
  }
  return std::string(dtype.itemsize == 1 ? "|" : "<") + code + std::to_string(dtype.itemsize);
}

std::string Name(DType dtype) {
  switch (dtype.kind) {
    case Kind::kFloat: return "float" + std::to_string(dtype.itemsize * 8);
    case Kind::kInt: return "int" + std::to_string(dtype.itemsize * 8);
    case Kind::kUInt: return "uint" + std::to_string(dtype.itemsize * 8);
    case Kind::kBool: return "bool";
  }
  return "?";
}

Array Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff file_size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (file_size < 0) Fail(path, "cannot determine file size");

  char prefix[kMagicLen + 2];
  if (!in.read(prefix, sizeof(prefix)) || std::memcmp(prefix, kMagic, kMagicLen) != 0) {
    Fail(path, "not a .npy file (missing \\x93NUMPY magic)");
  }
  const int major = static_cast<unsigned char>(prefix[kMagicLen]);
  std::size_t header_len = 0;
  std::size_t prelude = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) Fail(path, "truncated .npy header");
    header_len = b[0] | (b[1] << 8);
    prelude = kMagicLen + 2 + 2;
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) Fail(path, "truncated .npy header");
    header_len = static_cast<std::size_t>(b[0]) | (static_cast<std::size_t>(b[1]) << 8) |
                 (static_cast<std::size_t>(b[2]) << 16) | (static_cast<std::size_t>(b[3]) << 24);
    prelude = kMagicLen + 2 + 4;
  } else {
    Fail(path, "unsupported .npy format version " + std::to_string(major));
  }
  if (static_cast<std::streamoff>(prelude + header_len) > file_size) {
    Fail(path, "truncated .npy header");
  }
  std::string header(header_len, '\0');
  if (!in.read(&header[0], static_cast<std::streamsize>(header_len))) {
    Fail(path, "truncated .npy header");
  }

  std::string descr;
  bool fortran = false;
  Array arr;
  HeaderParser(path, header).Parse(&descr, &fortran, &arr.shape);
  arr.dtype = ParseDescr(path, descr);
  if (fortran && arr.shape.size() > 1) {
    Fail(path, "Fortran-order arrays are not supported (save with np.ascontiguousarray)");
  }
  // Overflow-safe size computation.
  uint64_t numel = 1;
  for (int64_t d : arr.shape) {
    if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / static_cast<uint64_t>(d)) {
      Fail(path, "array too large");
    }
    numel *= static_cast<uint64_t>(d);
  }
  const uint64_t nbytes = numel * static_cast<uint64_t>(arr.dtype.itemsize);
  const uint64_t available = static_cast<uint64_t>(file_size) - prelude - header_len;
  if (available < nbytes) {
    Fail(path, "truncated data: header promises " + std::to_string(nbytes) + " bytes, file has " +
                   std::to_string(available));
  }
  if (available > nbytes) {
    Fail(path, "corrupt file: " + std::to_string(available - nbytes) +
                   " unexpected bytes after the array data");
  }
  arr.data = AllocAligned(static_cast<std::size_t>(nbytes));
  if (nbytes > 0 &&
      !in.read(reinterpret_cast<char*>(arr.data.get()), static_cast<std::streamsize>(nbytes))) {
    Fail(path, "read error in array data");
  }
  return arr;
}

void Write(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
           const void* data, std::size_t nbytes) {
  std::ostringstream dict;
  dict << "{'descr': '" << Descr(dtype) << "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dict << shape[i];
    if (shape.size() == 1 || i + 1 < shape.size()) dict << ",";
    if (i + 1 < shape.size()) dict << " ";
  }
  dict << "), }";
  std::string header = dict.str();
  // Pad with spaces and end with '\n' so that the data starts on a 64-byte boundary.
  std::size_t prelude = kMagicLen + 2 + 2;
  int major = 1;
  if (prelude + header.size() + 1 > 65535) {
    prelude = kMagicLen + 2 + 4;
    major = 2;
  }
  std::size_t total = prelude + header.size() + 1;
  std::size_t padded = (total + 63) / 64 * 64;
  header.append(padded - total, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) Fail(path, std::string("cannot create: ") + std::strerror(errno));
  out.write(kMagic, kMagicLen);
  out.put(static_cast<char>(major));
  out.put(0);
  const std::size_t hl = header.size();
  if (major == 1) {
    out.put(static_cast<char>(hl & 0xff));
    out.put(static_cast<char>((hl >> 8) & 0xff));
  } else {
    for (int i = 0; i < 4; ++i) out.put(static_cast<char>((hl >> (8 * i)) & 0xff));
  }
  out.write(header.data(), static_cast<std::streamsize>(hl));
  if (nbytes > 0) out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  out.close();
  if (!out) Fail(path, std::string("write failed: ") + std::strerror(errno));
}

}  // namespace npy
