// Minimal reader/writer for NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Supported element types: float16/32/64, int8/16/32/64, uint8/16/32/64 and bool,
// little-endian, C order. Anything else is rejected with an NpyError whose message
// names the file and the cause.
#ifndef TVM_CPP_CHECK_NPY_H_
#define TVM_CPP_CHECK_NPY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

/*! \brief Element kind, mirrors DLPack's type codes for the subset we support. */
enum class Kind { kInt, kUInt, kFloat, kBool };

/*! \brief Scalar type of an array: kind plus size of one element in bytes. */
struct DType {
  Kind kind;
  int itemsize;
};

/*! \brief Error reading or writing a .npy file; the message names the file. */
class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/*! \brief Alignment of the data buffers this module allocates (bytes). */
constexpr std::size_t kAlignment = 64;

/*! \brief Allocate `nbytes` (at least 1) aligned to kAlignment, freed with std::free. */
std::shared_ptr<uint8_t> AllocAligned(std::size_t nbytes);

/*! \brief An array loaded from a .npy file, data in a 64-byte aligned buffer. */
struct Array {
  DType dtype;
  std::vector<int64_t> shape;
  std::shared_ptr<uint8_t> data;  // kAlignment-aligned, nbytes() long (at least 1 byte)
  int64_t numel() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype.itemsize; }
};

/*! \brief Read a .npy file; throws NpyError naming `path` on any problem. */
Array Read(const std::string& path);

/*! \brief Write a C-order little-endian .npy file; throws NpyError naming `path`. */
void Write(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
           const void* data, std::size_t nbytes);

/*! \brief NumPy descr string of a dtype, e.g. "<f4", "|b1". */
std::string Descr(DType dtype);

/*! \brief Human readable dtype name, e.g. "float32". */
std::string Name(DType dtype);

}  // namespace npy

#endif  // TVM_CPP_CHECK_NPY_H_
