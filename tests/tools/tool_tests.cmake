# CTest tests of the `psa` command-line tool (label `tool`); included from tests/CMakeLists.txt.
# They run the built executable on small shapes so that all of them finish in a few seconds.
set(PSA_TOOL_TEST_DIR "${CMAKE_CURRENT_BINARY_DIR}/tool_test_output")
file(MAKE_DIRECTORY "${PSA_TOOL_TEST_DIR}")
set(PSA_TOOL_CHECK "${CMAKE_CURRENT_LIST_DIR}/check_tool_output.cmake")

# A check runs the tool through a CMake script that asserts on its exit status and outputs.
# Lists travel to the script joined with "|" (a ";" would split the -D argument); @OUT@ in an
# argument stands for the output directory. HOSTILE adds the label `hostile`: the sanitizer job of
# scripts/test.sh runs those together with the CPU tests.
function(psa_tool_test name)
  cmake_parse_arguments(ARG "HOSTILE" "" "ARGS;CHECK" ${ARGN})
  string(JOIN "|" joined_args ${ARG_ARGS})
  add_test(NAME tool.${name}
    COMMAND ${CMAKE_COMMAND}
      -DTOOL=$<TARGET_FILE:psa_tool>
      "-DARGS=${joined_args}"
      -DOUT_DIR=${PSA_TOOL_TEST_DIR}
      -DNAME=${name}
      ${ARG_CHECK}
      -P ${PSA_TOOL_CHECK})
  set(labels tool)
  if(ARG_HOSTILE)
    list(APPEND labels hostile)
  endif()
  set_tests_properties(tool.${name} PROPERTIES LABELS "${labels}" TIMEOUT 60)
endfunction()

psa_tool_test(help ARGS --help CHECK -DEXPECT_EXIT=0 -DEXPECT_STDOUT=Subcommands)
psa_tool_test(run_help ARGS run --help CHECK -DEXPECT_EXIT=0 -DEXPECT_STDOUT=--preset)
psa_tool_test(sweep_help ARGS sweep --help CHECK -DEXPECT_EXIT=0 -DEXPECT_STDOUT=--points)

# The embedded default workload, as a user runs it; JSON keys are checked with string(JSON).
psa_tool_test(run_json ARGS run --json --no-recall
  CHECK -DEXPECT_EXIT=0
        "-DEXPECT_JSON_KEYS=density|rel_l2|cosine|binary_rel_l2|plan_ms|attention_ms|dense_ms")
psa_tool_test(run_table ARGS run --shape 4,8,16 --preset Wan2.1_1.3b:psa_balanced --text 16
  CHECK -DEXPECT_EXIT=0 -DEXPECT_STDOUT=binary)
psa_tool_test(presets ARGS presets --shape 4,8,16
  CHECK -DEXPECT_EXIT=0 -DEXPECT_STDOUT=measured)
psa_tool_test(plan ARGS plan --shape 4,16,16 --head 1 --out @OUT@/plan.png
  CHECK -DEXPECT_EXIT=0 -DEXPECT_PNG=plan.png)
psa_tool_test(sweep ARGS sweep --shape 4,8,16 --points 3 --csv @OUT@/sweep.csv --png @OUT@/sweep.png
  CHECK -DEXPECT_EXIT=0 -DEXPECT_PNG=sweep.png -DEXPECT_CSV=sweep.csv -DEXPECT_CSV_ROWS=3)

# Bad options fail with a message that names the problem.
psa_tool_test(bad_shape ARGS run --shape 8,16
  CHECK -DEXPECT_EXIT=nonzero -DEXPECT_STDERR=--shape)
psa_tool_test(bad_preset ARGS run --preset nope:nope
  CHECK -DEXPECT_EXIT=nonzero -DEXPECT_STDERR=nope)
psa_tool_test(bad_device ARGS run --device tpu
  CHECK -DEXPECT_EXIT=nonzero -DEXPECT_STDERR=device)
psa_tool_test(no_subcommand CHECK -DEXPECT_EXIT=nonzero -DEXPECT_STDERR=subcommand)
if(NOT PSA_WITH_CUDA)
  psa_tool_test(cuda_not_built ARGS run --device cuda
    CHECK -DEXPECT_EXIT=2 "-DEXPECT_STDERR=built without the CUDA backend")
else()
  # A CUDA build on a machine without a usable GPU (CI's; on a GPU machine the device is hidden
  # with CUDA_VISIBLE_DEVICES=-1) says so and how to run on the CPU, before any CUDA call fails.
  psa_tool_test(cuda_no_device ARGS run --device cuda
    CHECK -DEXPECT_EXIT=1
          "-DEXPECT_STDERR=no usable CUDA device was found|run on the CPU with --device cpu")
  set_tests_properties(tool.cuda_no_device PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
endif()

# Equal density means equal: binary block-sparse gets PSA's density with the text blocks counted.
psa_tool_test(run_text_equal_density
  ARGS run --preset CogVideo_5b:psa_balanced --text 226 --shape 4,16,16 --no-recall --json
  CHECK -DEXPECT_EXIT=0 "-DEXPECT_STDOUT=\"binary_equal_density\": true")
if(PSA_WITH_CUDA)
  # The same search with plans made on the GPU; skipped where the build has CUDA but no device.
  psa_tool_test(run_text_equal_density_cuda
    ARGS run --device cuda --preset CogVideo_5b:psa_balanced --text 226 --shape 4,16,16
         --no-recall --json
    CHECK -DEXPECT_EXIT=0 "-DEXPECT_STDOUT=\"binary_equal_density\": true" -DSKIP_IF_NO_GPU=ON)
  set_tests_properties(tool.run_text_equal_density_cuda PROPERTIES
    SKIP_REGULAR_EXPRESSION "skipped: no usable CUDA device")
endif()

# Hostile command lines (issue 11): each fails with a plain message naming the option.
psa_tool_test(presets_file_missing HOSTILE ARGS run --presets-file @OUT@/missing.yaml
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=cannot open preset file")
psa_tool_test(presets_file_missing_plan HOSTILE ARGS plan --presets-file @OUT@/missing.yaml
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=cannot open preset file")
psa_tool_test(presets_file_missing_sweep HOSTILE ARGS sweep --presets-file @OUT@/missing.yaml
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=cannot open preset file")
psa_tool_test(presets_file_without_preset HOSTILE
  ARGS run --presets-file ${PROJECT_SOURCE_DIR}/tests/data/presets/user_model.yaml
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=needs --preset")
psa_tool_test(heads_zero HOSTILE ARGS run --heads 0
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=--heads: must be an integer in [1, 2147483647], got '0'")
psa_tool_test(head_dim_negative HOSTILE ARGS run --head-dim -8
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=--head-dim: must be an integer in [1,")
psa_tool_test(text_negative HOSTILE ARGS presets --text -1
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=--text: must be an integer in [0,")
psa_tool_test(min_scale_zero HOSTILE ARGS sweep --min-scale 0
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=--min-scale: must be a positive number, got '0'")
psa_tool_test(seed_negative HOSTILE ARGS run --seed -1
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=--seed: must be an integer in [0, 2^64 - 1]")
psa_tool_test(unknown_subcommand HOSTILE ARGS bogus
  CHECK -DEXPECT_EXIT=nonzero "-DEXPECT_STDERR=unknown subcommand 'bogus'")
psa_tool_test(shape_too_long HOSTILE ARGS run --shape 2097152,1048576,1048576 --heads 1 --head-dim 2
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=psa attends at most 2^31 - 1")
psa_tool_test(shape_overflows HOSTILE ARGS presets --shape 999999999,999999999,999999999
  CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=more than 2^63 tokens")
# 16 TB of q, k, v: no machine has it. AddressSanitizer's operator new aborts instead of throwing
# std::bad_alloc, so this one runs in builds without it.
if(NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize=[^ ]*address")
  psa_tool_test(out_of_memory ARGS run --shape 1000,1000,1000 --heads 64
    CHECK -DEXPECT_EXIT=1 "-DEXPECT_STDERR=out of memory")
endif()

# docs/cli.md's examples are the tool's output (scripts/cli_docs.py; the target cli_docs
# rewrites them). Label `docs`: the full-size examples take a few seconds in a release build.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME tool.cli_doc
    COMMAND Python3::Interpreter ${PROJECT_SOURCE_DIR}/scripts/cli_docs.py --check
            --tool $<TARGET_FILE:psa_tool> ${PROJECT_SOURCE_DIR}/docs/cli.md)
  set_tests_properties(tool.cli_doc PROPERTIES LABELS "tool;docs" TIMEOUT 300)
endif()
