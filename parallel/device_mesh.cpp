// Mesh layout and groups; see device_mesh.h.
#include "parallel/device_mesh.h"

#include <array>

#include "core/error.h"

namespace chunkflow::parallel {
namespace {

int& coordinate(MeshCoordinates& coordinates, const std::string& axis) {
  if (axis == "dp") return coordinates.dp;
  if (axis == "cp") return coordinates.cp;
  if (axis == "tp") return coordinates.tp;
  CF_ASSERT(axis == "pp", "unknown axis ", axis);
  return coordinates.pp;
}

int degree(const configs::ParallelConfig& config, const std::string& axis) {
  if (axis == "dp") return static_cast<int>(config.dp);
  if (axis == "cp") return static_cast<int>(config.cp);
  if (axis == "tp") return static_cast<int>(config.tp);
  return static_cast<int>(config.pp);
}

// The group of `rank` along `axis`: same color for ranks equal in every other coordinate.
std::unique_ptr<Communicator> axis_group(Communicator& world, const configs::ParallelConfig& config,
                                         const MeshCoordinates& mine, const std::string& axis) {
  MeshCoordinates others = mine;
  coordinate(others, axis) = 0;
  MeshCoordinates copy = mine;
  return world.split(mesh_rank(others, config), coordinate(copy, axis));
}

}  // namespace

MeshCoordinates mesh_coordinates(int rank, const configs::ParallelConfig& config) {
  CF_ASSERT(rank >= 0 && rank < config.world_size(), "rank ", rank, " outside the mesh");
  MeshCoordinates coordinates;
  const auto order = config.axis_order();
  int remaining = rank;
  for (auto axis = order.rbegin(); axis != order.rend(); ++axis) {  // innermost first
    coordinate(coordinates, *axis) = remaining % degree(config, *axis);
    remaining /= degree(config, *axis);
  }
  return coordinates;
}

int mesh_rank(const MeshCoordinates& coordinates, const configs::ParallelConfig& config) {
  MeshCoordinates copy = coordinates;
  int rank = 0;
  for (const auto& axis : config.axis_order()) rank = rank * degree(config, axis) + coordinate(copy, axis);
  return rank;
}

DeviceMesh::DeviceMesh(const configs::ParallelConfig& config, Communicator& world) {
  config.check_world(world.size());
  coordinates_ = mesh_coordinates(world.rank(), config);
  dp_group_ = axis_group(world, config, coordinates_, "dp");
  cp_group_ = axis_group(world, config, coordinates_, "cp");
  pp_group_ = axis_group(world, config, coordinates_, "pp");
  tp_group_ = axis_group(world, config, coordinates_, "tp");
  stage_group_ = world.split(coordinates_.pp * static_cast<int>(config.tp) + coordinates_.tp, world.rank());
}

}  // namespace chunkflow::parallel
