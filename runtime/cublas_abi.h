/// \file cublas_abi.h
/// The few cuBLAS and cuBLASLt types and enum values kiln passes, spelled out so that the build
/// needs no CUDA header (as cuda_driver.cpp does for libcuda). The values are those of CUDA 12
/// and 13's cublasLt.h, cublas_api.h and library_types.h; tests/cpp/cublas_abi_test.cpp checks
/// them against the real headers when the build finds them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ir/dtype.h"

namespace kiln::runtime::cublas_abi {

// cublasComputeType_t
constexpr int kComputeF32 = 68;  ///< CUBLAS_COMPUTE_32F: float accumulation, no TF32 (eager's default)
// cudaDataType
constexpr int kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 14;
/// The cudaDataType of a kiln dtype cuBLAS multiplies; -1 for the others.
inline int data_type(ir::DType t) {
  switch (t) {
    case ir::DType::Float32: return kF32;
    case ir::DType::Float64: return kF64;
    case ir::DType::Float16: return kF16;
    case ir::DType::BFloat16: return kBF16;
    default: return -1;
  }
}
// cublasOperation_t
constexpr int32_t kOpN = 0, kOpT = 1;
// cublasGemmAlgo_t: cuBLAS's heuristic choice
constexpr int kGemmDefault = -1;
// cublasLtMatmulDescAttributes_t
constexpr int kDescTransA = 3, kDescTransB = 4, kDescEpilogue = 7, kDescBiasPointer = 8;
// cublasLtMatrixLayoutAttribute_t
constexpr int kLayoutBatchCount = 5, kLayoutBatchStride = 6;
// cublasLtMatmulPreferenceAttributes_t
constexpr int kPrefMaxWorkspace = 1, kPrefAlignA = 5, kPrefAlignB = 6, kPrefAlignC = 7, kPrefAlignD = 8;
// cublasLtEpilogue_t
constexpr uint32_t kEpilogueDefault = 1, kEpilogueBias = 4;

/// cublasLtMatmulAlgo_t
struct Algo {
  uint64_t data[8];
};
/// cublasLtMatmulHeuristicResult_t
struct HeuristicResult {
  Algo algo;
  size_t workspace_size;
  int state;
  float waves_count;
  int reserved[4];
};

}  // namespace kiln::runtime::cublas_abi
