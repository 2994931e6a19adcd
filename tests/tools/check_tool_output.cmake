# Runs the psa tool once and checks what it did (a -P script used by tool_tests.cmake).
# Inputs: TOOL, ARGS ("|"-separated, @OUT@ = OUT_DIR), OUT_DIR, NAME, EXPECT_EXIT (a number or
# "nonzero"), and optionally EXPECT_STDOUT (a substring) / EXPECT_STDERR ("|"-separated
# substrings, all required), EXPECT_JSON_KEYS
# ("|"-separated numeric keys of the JSON object printed on stdout), EXPECT_PNG (a file in
# OUT_DIR that must start with the PNG signature), EXPECT_CSV and EXPECT_CSV_ROWS, and
# SKIP_IF_NO_GPU (the run needs a usable CUDA device: without one the script prints
# "skipped: no usable CUDA device", which the test's SKIP_REGULAR_EXPRESSION turns into a skip).
cmake_minimum_required(VERSION 3.19)  # string(JSON)

string(REPLACE "@OUT@" "${OUT_DIR}" args "${ARGS}")
string(REPLACE "|" ";" args "${args}")
foreach(produced IN ITEMS ${EXPECT_PNG} ${EXPECT_CSV})
  file(REMOVE "${OUT_DIR}/${produced}")
endforeach()

execute_process(COMMAND "${TOOL}" ${args}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)

if(SKIP_IF_NO_GPU AND err MATCHES "no usable CUDA device was found")
  message(STATUS "tool.${NAME}: skipped: no usable CUDA device")
  return()
endif()

function(fail reason)
  message(FATAL_ERROR "tool.${NAME}: ${reason}\n"
                      "command: psa ${args}\nexit: ${rc}\nstdout:\n${out}\nstderr:\n${err}")
endfunction()

if(EXPECT_EXIT STREQUAL "nonzero")
  if(rc STREQUAL "0")
    fail("expected a non-zero exit status")
  endif()
elseif(NOT rc STREQUAL "${EXPECT_EXIT}")
  fail("expected exit status ${EXPECT_EXIT}")
endif()

if(DEFINED EXPECT_STDOUT)
  string(FIND "${out}" "${EXPECT_STDOUT}" at)
  if(at EQUAL -1)
    fail("stdout does not contain '${EXPECT_STDOUT}'")
  endif()
endif()
if(DEFINED EXPECT_STDERR)
  string(REPLACE "|" ";" fragments "${EXPECT_STDERR}")
  foreach(fragment IN LISTS fragments)
    string(FIND "${err}" "${fragment}" at)
    if(at EQUAL -1)
      fail("stderr does not contain '${fragment}'")
    endif()
  endforeach()
endif()

if(DEFINED EXPECT_JSON_KEYS)
  # The whole of stdout must be one JSON object: string(JSON) rejects anything around it.
  string(JSON type ERROR_VARIABLE json_error TYPE "${out}")
  if(json_error OR NOT type STREQUAL "OBJECT")
    fail("stdout is not one JSON object (${json_error})")
  endif()
  string(REPLACE "|" ";" keys "${EXPECT_JSON_KEYS}")
  foreach(key IN LISTS keys)
    string(JSON key_type ERROR_VARIABLE json_error TYPE "${out}" "${key}")
    if(json_error OR NOT key_type STREQUAL "NUMBER")
      fail("JSON key '${key}' missing or not a number (${json_error})")
    endif()
  endforeach()
endif()

if(DEFINED EXPECT_PNG)
  set(png "${OUT_DIR}/${EXPECT_PNG}")
  if(NOT EXISTS "${png}")
    fail("${png} was not written")
  endif()
  file(READ "${png}" signature LIMIT 8 HEX)
  if(NOT signature STREQUAL "89504e470d0a1a0a")
    fail("${png} does not start with the PNG signature (got ${signature})")
  endif()
endif()

if(DEFINED EXPECT_CSV)
  set(csv "${OUT_DIR}/${EXPECT_CSV}")
  if(NOT EXISTS "${csv}")
    fail("${csv} was not written")
  endif()
  file(STRINGS "${csv}" lines)
  list(LENGTH lines count)
  list(GET lines 0 header)
  if(NOT header MATCHES "^scale,.*psa_density,psa_rel_l2,.*binary_density,binary_rel_l2")
    fail("${csv} header is '${header}'")
  endif()
  math(EXPR expected "${EXPECT_CSV_ROWS} + 1")
  if(NOT count EQUAL expected)
    fail("${csv} has ${count} lines, expected a header and ${EXPECT_CSV_ROWS} rows")
  endif()
endif()
