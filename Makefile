# The two commands: `make run` and `make test`. Everything else is a helper.
BUILD_RELEASE ?= build/release
BUILD_TEST    ?= build/test
FUZZ_SECONDS  ?= 60
JOBS          ?= $(shell nproc)
LISTEN        ?= 127.0.0.1:8080
RUN_ARGS      ?= --ai-demo --data-dir ./data

.PHONY: all deps build run test test-unit test-integration fuzz bench clean format

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD_RELEASE) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_RELEASE) -j $(JOBS)

run: build
	./$(BUILD_RELEASE)/switchboard serve --listen $(LISTEN) $(RUN_ARGS)

# Test build: clang, ASan + UBSan, libFuzzer targets. ctest runs the C unit
# tests and the Node integration and browser suites against the sanitized binary.
$(BUILD_TEST)/CMakeCache.txt:
	@cmake -S . -B $(BUILD_TEST) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
	    -DSB_SANITIZE=ON -DSB_FUZZ=ON $(if $(CI),-DSB_WERROR=ON) >/dev/null

test-build: deps $(BUILD_TEST)/CMakeCache.txt
	@cmake --build $(BUILD_TEST) -j $(JOBS)

test: test-build
	cd $(BUILD_TEST) && ctest --output-on-failure -j $(JOBS) --timeout 600
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(BUILD_TEST)

test-unit: test-build
	cd $(BUILD_TEST) && ctest --output-on-failure -L unit -j $(JOBS)

test-integration: test-build
	cd $(BUILD_TEST) && ctest --output-on-failure -L integration

fuzz: test-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(BUILD_TEST)

bench: build
	@bench/run.sh

clean:
	rm -rf build

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'bench/*.c')
