# One precompiled <torch/torch.h> for every C++ target that compiles against LibTorch.
#
# Parsing the torch headers is most of what a ChunkFlow source file costs to compile (measured on
# 2 cores, docs/building.md): trainer.cpp takes 25 s at -O2 -g1, 16 s with the header
# precompiled. Each target would otherwise build its own precompiled header (about 30 s and
# 700 MB each), so two holder targets build it once and every other target reuses theirs:
# one for libraries (-fPIC) and one for programs (-fPIE), because GCC refuses a precompiled
# header built with the other of the two flags.
#
# Which targets: those linking LibTorch, directly or through one of the project's libraries
# (found after every folder is added, so no CMakeLists has to remember it), except targets with
# the CHUNKFLOW_NO_TORCH_PCH property: a target compiled with other flags that change what the
# torch headers mean (kernels compile with -fopenmp, which defines _OPENMP) must parse them itself.

option(CHUNKFLOW_PCH "Precompile the LibTorch headers once and reuse them in every torch target" ON)

# Every build-system target defined in `directory` and below.
function(chunkflow_collect_targets directory out_var)
  get_property(targets DIRECTORY ${directory} PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirectories DIRECTORY ${directory} PROPERTY SUBDIRECTORIES)
  foreach(subdirectory ${subdirectories})
    chunkflow_collect_targets(${subdirectory} sub_targets)
    list(APPEND targets ${sub_targets})
  endforeach()
  set(${out_var} ${targets} PARENT_SCOPE)
endfunction()

# The project's compiled C++ targets that link LibTorch, directly or through another such target.
function(chunkflow_torch_targets out_var)
  chunkflow_collect_targets(${PROJECT_SOURCE_DIR} all_targets)
  set(candidates "")
  foreach(target ${all_targets})
    get_target_property(type ${target} TYPE)
    get_target_property(source_dir ${target} SOURCE_DIR)
    string(FIND "${source_dir}" "${PROJECT_SOURCE_DIR}" in_project)
    if(type MATCHES "^(EXECUTABLE|STATIC_LIBRARY|SHARED_LIBRARY|OBJECT_LIBRARY)$" AND in_project EQUAL 0
       AND NOT target MATCHES "^chunkflow_torch_pch_")
      list(APPEND candidates ${target})
    endif()
  endforeach()
  # Fixed point: a target is a torch target when one of its link libraries is torch or a torch target.
  set(torch_targets "")
  set(changed TRUE)
  while(changed)
    set(changed FALSE)
    foreach(target ${candidates})
      if(target IN_LIST torch_targets)
        continue()
      endif()
      get_target_property(links ${target} LINK_LIBRARIES)
      foreach(link ${links})
        if(TARGET ${link})
          get_target_property(aliased ${link} ALIASED_TARGET)
          if(aliased)
            set(link ${aliased})
          endif()
        endif()
        if(link STREQUAL "torch" OR link IN_LIST torch_targets)
          list(APPEND torch_targets ${target})
          set(changed TRUE)
          break()
        endif()
      endforeach()
    endforeach()
  endwhile()
  set(${out_var} ${torch_targets} PARENT_SCOPE)
endfunction()

function(chunkflow_enable_torch_pch)
  if(NOT CHUNKFLOW_PCH OR NOT TARGET torch)
    return()
  endif()
  chunkflow_torch_targets(torch_targets)
  file(WRITE ${CMAKE_BINARY_DIR}/chunkflow_torch_pch.cpp "// Holds the precompiled torch header (cmake/ChunkFlowPch.cmake).\n")
  file(WRITE ${CMAKE_BINARY_DIR}/chunkflow_torch_pch_main.cpp "// Holds the precompiled torch header (cmake/ChunkFlowPch.cmake).\nint main() { return 0; }\n")
  add_library(chunkflow_torch_pch_library OBJECT ${CMAKE_BINARY_DIR}/chunkflow_torch_pch.cpp)
  add_executable(chunkflow_torch_pch_program ${CMAKE_BINARY_DIR}/chunkflow_torch_pch_main.cpp)
  foreach(holder chunkflow_torch_pch_library chunkflow_torch_pch_program)
    target_link_libraries(${holder} PRIVATE ${TORCH_LIBRARIES} chunkflow_warnings)
    target_precompile_headers(${holder} PRIVATE <torch/torch.h>)
  endforeach()
  set(reusing 0)
  foreach(target ${torch_targets})
    get_target_property(opted_out ${target} CHUNKFLOW_NO_TORCH_PCH)
    if(opted_out)
      continue()
    endif()
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_precompile_headers(${target} REUSE_FROM chunkflow_torch_pch_program)
    else()
      target_precompile_headers(${target} REUSE_FROM chunkflow_torch_pch_library)
    endif()
    math(EXPR reusing "${reusing} + 1")
  endforeach()
  message(STATUS "ChunkFlow: precompiled <torch/torch.h> reused by ${reusing} targets (CHUNKFLOW_PCH)")
endfunction()
