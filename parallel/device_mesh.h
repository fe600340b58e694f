// The process mesh: world = dp x cp x pp x tp ranks, laid out by parallel.order (outermost axis
// first; consecutive ranks differ in the innermost axis, tp unless the order names it), with one
// process group per axis. Groups are
// created here once and passed explicitly to whoever communicates; nothing looks them up globally.
#pragma once

#include <memory>

#include "configs/parallel_config.h"
#include "parallel/communicator.h"

namespace chunkflow::parallel {

struct MeshCoordinates {
  int dp = 0, cp = 0, pp = 0, tp = 0;
  bool operator==(const MeshCoordinates&) const = default;
};

// Pure layout arithmetic (no communication).
MeshCoordinates mesh_coordinates(int rank, const configs::ParallelConfig& config);
int mesh_rank(const MeshCoordinates& coordinates, const configs::ParallelConfig& config);

class DeviceMesh {
 public:
  // Collective over `world`: checks dp x cp x pp x tp == world size (an error naming every degree)
  // and splits the world into the dp, cp, pp and tp groups of this rank.
  DeviceMesh(const configs::ParallelConfig& config, Communicator& world);

  const MeshCoordinates& coordinates() const { return coordinates_; }
  // Ranks that differ only in the named coordinate; group rank == that coordinate.
  Communicator& dp_group() { return *dp_group_; }
  Communicator& cp_group() { return *cp_group_; }
  Communicator& pp_group() { return *pp_group_; }
  Communicator& tp_group() { return *tp_group_; }
  // Ranks that hold the same parameters (the same pipeline stage and tensor-parallel slice; every
  // dp and cp coordinate): the group whose gradients are summed.
  Communicator& stage_group() { return *stage_group_; }

 private:
  MeshCoordinates coordinates_;
  std::unique_ptr<Communicator> dp_group_, cp_group_, pp_group_, tp_group_, stage_group_;
};

}  // namespace chunkflow::parallel
