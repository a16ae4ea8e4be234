/// \file cublas_abi_test.cpp
/// The cuBLAS and cuBLASLt values kiln spells out (runtime/cublas_abi.h, so that the build needs
/// no CUDA header) against their own headers.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include "runtime/cublas_abi.h"

namespace lt = kiln::runtime::cublas_abi;

TEST(CublasAbi, EnumValuesMatchTheHeaders) {
  EXPECT_EQ(lt::kComputeF32, CUBLAS_COMPUTE_32F);
  EXPECT_EQ(lt::kF32, CUDA_R_32F);
  EXPECT_EQ(lt::kF64, CUDA_R_64F);
  EXPECT_EQ(lt::kF16, CUDA_R_16F);
  EXPECT_EQ(lt::kBF16, CUDA_R_16BF);
  EXPECT_EQ(lt::kOpN, CUBLAS_OP_N);
  EXPECT_EQ(lt::kOpT, CUBLAS_OP_T);
  EXPECT_EQ(lt::kGemmDefault, CUBLAS_GEMM_DEFAULT);
  EXPECT_EQ(lt::kDescTransA, CUBLASLT_MATMUL_DESC_TRANSA);
  EXPECT_EQ(lt::kDescTransB, CUBLASLT_MATMUL_DESC_TRANSB);
  EXPECT_EQ(lt::kDescEpilogue, CUBLASLT_MATMUL_DESC_EPILOGUE);
  EXPECT_EQ(lt::kDescBiasPointer, CUBLASLT_MATMUL_DESC_BIAS_POINTER);
  EXPECT_EQ(lt::kLayoutBatchCount, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT);
  EXPECT_EQ(lt::kLayoutBatchStride, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET);
  EXPECT_EQ(lt::kPrefMaxWorkspace, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES);
  EXPECT_EQ(lt::kPrefAlignA, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES);
  EXPECT_EQ(lt::kPrefAlignB, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES);
  EXPECT_EQ(lt::kPrefAlignC, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES);
  EXPECT_EQ(lt::kPrefAlignD, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES);
  EXPECT_EQ(lt::kEpilogueDefault, static_cast<uint32_t>(CUBLASLT_EPILOGUE_DEFAULT));
  EXPECT_EQ(lt::kEpilogueBias, static_cast<uint32_t>(CUBLASLT_EPILOGUE_BIAS));
}

TEST(CublasAbi, StructsMatchTheHeader) {
  EXPECT_EQ(sizeof(lt::Algo), sizeof(cublasLtMatmulAlgo_t));
  EXPECT_EQ(sizeof(lt::HeuristicResult), sizeof(cublasLtMatmulHeuristicResult_t));
  EXPECT_EQ(offsetof(lt::HeuristicResult, workspace_size), offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize));
  EXPECT_EQ(offsetof(lt::HeuristicResult, state), offsetof(cublasLtMatmulHeuristicResult_t, state));
}
