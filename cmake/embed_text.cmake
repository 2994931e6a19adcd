# Writes a C++ source holding the text of INPUT as psa::detail::kBuiltinPresetsYaml.
file(READ "${INPUT}" content)
set(delim "psa_yaml")
file(WRITE "${OUTPUT}" "// Generated from presets/psa_presets.yaml by cmake/embed_text.cmake.\n"
  "namespace psa::detail {\nextern const char* const kBuiltinPresetsYaml;\n"
  "const char* const kBuiltinPresetsYaml = R\"${delim}(${content})${delim}\";\n}\n")
