# Thin wrapper around CMake: `make run` and `make test` are the two commands a user needs.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps build run test clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# The seed's LoRALayer benchmark on the best backend present.
run: build
	$(BUILD)/lorafuse bench

test: build
	@# -V: the tests print what they skipped (no GPU here) and their pass/fail/skip counts
	cd $(BUILD) && ctest --output-on-failure -V

clean:
	rm -rf $(BUILD)
