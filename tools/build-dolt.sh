#!/usr/bin/env bash
# The dolt binary the tests run, built once into the tools cache; prints its path.
exec "$(dirname "${BASH_SOURCE[0]}")/build-go-tool.sh" dolt
