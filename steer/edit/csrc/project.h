// Interface between the torch binding (project.cpp) and the kernel (project_kernel.cpp).
#pragma once
#include <cstdint>

struct Problem {
  const void* x;  // [d, m] view: element (i, j) at x[i * sx + j] (rows) or x[j * sx + i] (columns)
  void* y;        // same shape and layout as x; equal to x for in place, else not overlapping it
  int64_t d, m, sx, sy;
  bool columns;   // vectors (the m columns of the view) contiguous in memory
  bool bf16;      // storage: bfloat16 bits, else float32
  const float* b;     // B [d, k]
  const float* bt;    // B^T [k, d]
  int64_t k;
  const float* gram;  // B^T B [k, k], or nullptr: no norm preservation
  float s;            // strength
};

void steer_project(const Problem& q);
