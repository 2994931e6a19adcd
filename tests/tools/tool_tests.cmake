# CTest tests of the `psa` command-line tool (label `tool`); included from tests/CMakeLists.txt.
# They run the built executable on small shapes so that all of them finish in a few seconds.
set(PSA_TOOL_TEST_DIR "${CMAKE_CURRENT_BINARY_DIR}/tool_test_output")
file(MAKE_DIRECTORY "${PSA_TOOL_TEST_DIR}")
set(PSA_TOOL_CHECK "${CMAKE_CURRENT_LIST_DIR}/check_tool_output.cmake")

# A check runs the tool through a CMake script that asserts on its exit status and outputs.
# Lists travel to the script joined with "|" (a ";" would split the -D argument); @OUT@ in an
# argument stands for the output directory.
function(psa_tool_test name)
  cmake_parse_arguments(ARG "" "" "ARGS;CHECK" ${ARGN})
  string(JOIN "|" joined_args ${ARG_ARGS})
  add_test(NAME tool.${name}
    COMMAND ${CMAKE_COMMAND}
      -DTOOL=$<TARGET_FILE:psa_tool>
      "-DARGS=${joined_args}"
      -DOUT_DIR=${PSA_TOOL_TEST_DIR}
      -DNAME=${name}
      ${ARG_CHECK}
      -P ${PSA_TOOL_CHECK})
  set_tests_properties(tool.${name} PROPERTIES LABELS tool TIMEOUT 60)
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
endif()

# Equal density means equal: binary block-sparse gets PSA's density with the text blocks counted.
psa_tool_test(run_text_equal_density
  ARGS run --preset CogVideo_5b:psa_balanced --text 226 --shape 4,16,16 --no-recall --json
  CHECK -DEXPECT_EXIT=0 "-DEXPECT_STDOUT=\"binary_equal_density\": true")
