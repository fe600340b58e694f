# Finds every dependency. LibTorch comes from the virtualenv that scripts/bootstrap.sh creates
# outside the checkout; the same default location is computed here so that a plain
# `cmake -S . -B build` finds it. Override with -DTorch_DIR=... or CHUNKFLOW_VENV.

find_package(Threads REQUIRED)
# The kernels-only build (GPU machines: CUDA + PyTorch, nothing else) needs none of these.
if(NOT CHUNKFLOW_KERNELS_ONLY)
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(Protobuf REQUIRED)

# The torch wheel ships the headers of its own (older, private) protobuf under its include
# folder, which comes before /usr/include on every torch target; our generated code needs the
# system protobuf's. A folder holding only a link to the system `google/` headers, searched
# first, restores them without reordering the compiler's system folders.
set(CHUNKFLOW_PROTOBUF_FIRST ${CMAKE_BINARY_DIR}/protobuf_include_first)
file(MAKE_DIRECTORY ${CHUNKFLOW_PROTOBUF_FIRST})
if(NOT EXISTS ${CHUNKFLOW_PROTOBUF_FIRST}/google)
  list(GET Protobuf_INCLUDE_DIRS 0 _protobuf_include)
  file(CREATE_LINK ${_protobuf_include}/google ${CHUNKFLOW_PROTOBUF_FIRST}/google SYMBOLIC)
endif()
endif()  # NOT CHUNKFLOW_KERNELS_ONLY

# --- CUDA --------------------------------------------------------------------------------------
set(CHUNKFLOW_CUDA_ENABLED OFF)
if(CHUNKFLOW_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # No GPU on the build machines, so `native` cannot work: list the architectures we ship.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    # The default static runtime plus CUDA::cudart would put two runtimes on the link line.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    # CMake 3.25 has no nvcc flags for CUDA20; kernels are written in C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(CMAKE_CUDA_EXTENSIONS OFF)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CHUNKFLOW_CUDA_ENABLED ON)
  else()
    message(STATUS "ChunkFlow: nvcc not found; building the CPU paths only")
  endif()
endif()
if(CHUNKFLOW_REQUIRE_CUDA AND NOT CHUNKFLOW_CUDA_ENABLED)
  message(FATAL_ERROR "ChunkFlow: CHUNKFLOW_REQUIRE_CUDA=ON but the CUDA kernels will not be compiled "
                      "(CHUNKFLOW_WITH_CUDA=${CHUNKFLOW_WITH_CUDA}, nvcc found: '${CMAKE_CUDA_COMPILER}'); "
                      "put nvcc on PATH or set CUDACXX")
endif()

# --- LibTorch ----------------------------------------------------------------------------------
if(CHUNKFLOW_WITH_TORCH)
  if(NOT Torch_DIR)
    if(DEFINED ENV{CHUNKFLOW_VENV})
      set(_chunkflow_venv "$ENV{CHUNKFLOW_VENV}")
    elseif(DEFINED ENV{CHUNKFLOW_CACHE})
      set(_chunkflow_venv "$ENV{CHUNKFLOW_CACHE}/venv")
    elseif(DEFINED ENV{XDG_CACHE_HOME})
      set(_chunkflow_venv "$ENV{XDG_CACHE_HOME}/chunkflow/venv")
    else()
      set(_chunkflow_venv "$ENV{HOME}/.cache/chunkflow/venv")
    endif()
    set(CHUNKFLOW_PYTHON "${_chunkflow_venv}/bin/python" CACHE FILEPATH
        "Python of the bootstrap virtualenv (provides LibTorch)")
    if(NOT EXISTS "${CHUNKFLOW_PYTHON}")
      message(FATAL_ERROR "ChunkFlow: no Python at ${CHUNKFLOW_PYTHON}; run scripts/bootstrap.sh "
                          "(or pass -DTorch_DIR=..., or -DCHUNKFLOW_WITH_TORCH=OFF)")
    endif()
    execute_process(
      COMMAND "${CHUNKFLOW_PYTHON}" -c "import torch; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_status)
    if(NOT _torch_status EQUAL 0)
      message(FATAL_ERROR "ChunkFlow: ${CHUNKFLOW_PYTHON} cannot import torch; run scripts/bootstrap.sh")
    endif()
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
  endif()
  # The wheel is a CUDA build. Naming the architectures keeps its config from probing for a GPU
  # (a try_run that fails on machines without one).
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  find_package(Torch REQUIRED)
  # libtorch exports its own copies of some std::filesystem functions, built against a newer
  # libstdc++; found first, they call internals the system libstdc++ lacks (remove_all jumps
  # to address 0). Loading libstdc++ first makes the system's definitions win.
  list(PREPEND TORCH_LIBRARIES stdc++)
  message(STATUS "ChunkFlow: LibTorch ${Torch_VERSION} from ${Torch_DIR}")
endif()
