# Thin wrapper: the real work is in scripts/ (each installs what it needs).
.PHONY: run test test-asan build clean

run:        ## install deps, build, start the local stack, run aigw with demo data
	bash scripts/run-local.sh

test:       ## the whole test suite against a private PostgreSQL/Redis/mock stack
	bash scripts/test.sh

test-asan:  ## the suite again under ASan+UBSan
	bash scripts/test.sh --sanitize

build:
	bash scripts/install-deps.sh
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j"$$(nproc)"

clean:
	rm -rf build build-asan build-release

.PHONY: bench
bench:      ## benchmark suite (S1..S5), writes bench/results/latest.json
	bash bench/run.sh
