# Writes OUT with `KLYNAA config --example`: the example config that is
# installed as etc/klynaa/klynaa.toml comes from the binary's own key table,
# so it can never disagree with it.
execute_process(COMMAND "${KLYNAA}" config --example
                OUTPUT_FILE "${OUT}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  file(REMOVE "${OUT}")
  message(FATAL_ERROR "'${KLYNAA} config --example' failed (${rc}): ${err}")
endif()
