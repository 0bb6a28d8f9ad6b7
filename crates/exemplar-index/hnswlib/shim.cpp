// A C interface to hnswlib's HierarchicalNSW<float> over inner products, for Rust.
//
// build.rs compiles this file once per instruction-set level (x86-64 baseline, v3, v4),
// each time with another EXEMPLAR_HNSW_NS. hnswlib is header-only: its templates and
// inline functions would be merged across the copies by the linker, so each copy wraps
// hnswlib in its own namespace and exports its functions with its own prefix. The Rust
// side picks one copy per process from the CPU it runs on.
//
// No C++ exception crosses into Rust: every function catches, copies the message into the
// caller's buffer and returns a non-zero status.

#include <algorithm>
#include <assert.h>
#include <atomic>
#include <deque>
#include <exception>
#include <fstream>
#include <iostream>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <queue>
#include <random>
#include <stdexcept>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#include <x86intrin.h>
#endif

#ifndef EXEMPLAR_HNSW_NS
#error "EXEMPLAR_HNSW_NS must name this copy"
#endif

// hnswlib writes its rare warnings to stderr by default; the service logs through Rust.
#define HNSWLIB_ERR_OVERRIDE std::cerr

namespace EXEMPLAR_HNSW_NS {
#include "hnswlib.h"
}

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)
#define EXPORT(name) CONCAT(EXEMPLAR_HNSW_NS, name)

namespace {

using Space = EXEMPLAR_HNSW_NS::hnswlib::InnerProductSpace;
using Graph = EXEMPLAR_HNSW_NS::hnswlib::HierarchicalNSW<float>;

struct Index {
    explicit Index(size_t dim) : space(dim) {}
    Space space;
    std::unique_ptr<Graph> graph;
};

void copy_message(const char* message, char* error, size_t error_len) {
    if (error == nullptr || error_len == 0) return;
    size_t n = strlen(message);
    if (n >= error_len) n = error_len - 1;
    memcpy(error, message, n);
    error[n] = '\0';
}

template <typename F>
int guarded(char* error, size_t error_len, F body) {
    try {
        body();
        return 0;
    } catch (const std::bad_alloc&) {
        copy_message("out of memory", error, error_len);
    } catch (const std::exception& e) {
        copy_message(e.what(), error, error_len);
    } catch (...) {
        copy_message("unknown C++ exception", error, error_len);
    }
    return 1;
}

}  // namespace

extern "C" {

int EXPORT(new)(size_t dim, size_t capacity, size_t m, size_t ef_construction, size_t seed,
                void** out, char* error, size_t error_len) {
    return guarded(error, error_len, [&] {
        auto index = std::make_unique<Index>(dim);
        index->graph = std::make_unique<Graph>(&index->space, capacity, m, ef_construction, seed,
                                               /*allow_replace_deleted=*/true);
        *out = index.release();
    });
}

int EXPORT(load)(const char* path, size_t dim, size_t capacity, void** out, char* error,
                 size_t error_len) {
    return guarded(error, error_len, [&] {
        auto index = std::make_unique<Index>(dim);
        index->graph = std::make_unique<Graph>(&index->space, std::string(path), false, capacity,
                                               /*allow_replace_deleted=*/true);
        *out = index.release();
    });
}

void EXPORT(free)(void* index) { delete static_cast<Index*>(index); }

int EXPORT(save)(void* index, const char* path, char* error, size_t error_len) {
    return guarded(error, error_len,
                   [&] { static_cast<Index*>(index)->graph->saveIndex(std::string(path)); });
}

int EXPORT(resize)(void* index, size_t capacity, char* error, size_t error_len) {
    return guarded(error, error_len,
                   [&] { static_cast<Index*>(index)->graph->resizeIndex(capacity); });
}

// Safe to call from several threads at once, for distinct labels.
int EXPORT(add)(void* index, uint64_t label, const float* vector, char* error,
                size_t error_len) {
    return guarded(error, error_len, [&] {
        Graph& graph = *static_cast<Index*>(index)->graph;
        // A deleted label may come back: revive its node with the new vector.
        bool deleted = false;
        {
            std::unique_lock<std::mutex> lock(graph.label_lookup_lock);
            auto found = graph.label_lookup_.find(label);
            deleted = found != graph.label_lookup_.end() && graph.isMarkedDeleted(found->second);
        }
        if (deleted) {
            graph.unmarkDelete(label);
            graph.addPoint(vector, label, false);
        } else {
            graph.addPoint(vector, label, /*replace_deleted=*/true);
        }
    });
}

// 1: the label was live and is now deleted; 0: it was not live.
int EXPORT(remove)(void* index, uint64_t label) {
    Graph& graph = *static_cast<Index*>(index)->graph;
    try {
        graph.markDelete(label);
        return 1;
    } catch (...) {
        return 0;
    }
}

int EXPORT(is_live)(const void* index, uint64_t label) {
    const Graph& graph = *static_cast<const Index*>(index)->graph;
    std::unique_lock<std::mutex> lock(graph.label_lookup_lock);
    auto found = graph.label_lookup_.find(label);
    return found != graph.label_lookup_.end() && !graph.isMarkedDeleted(found->second);
}

size_t EXPORT(live_count)(const void* index) {
    const Graph& graph = *static_cast<const Index*>(index)->graph;
    return graph.cur_element_count - graph.num_deleted_;
}

size_t EXPORT(capacity)(const void* index) {
    return static_cast<const Index*>(index)->graph->max_elements_;
}

void EXPORT(set_ef)(void* index, size_t ef) { static_cast<Index*>(index)->graph->setEf(ef); }

// Writes up to k labels and inner-product distances (1 - dot), nearest first; returns how
// many, or -1 with `error` set. Safe to call from several threads at once.
int64_t EXPORT(search)(const void* index, const float* query, size_t k, uint64_t* labels,
                       float* distances, char* error, size_t error_len) {
    int64_t found = 0;
    int status = guarded(error, error_len, [&] {
        auto result = static_cast<const Index*>(index)->graph->searchKnn(query, k);
        found = static_cast<int64_t>(result.size());
        // The queue pops the farthest first.
        for (int64_t i = found - 1; i >= 0; --i) {
            labels[i] = result.top().second;
            distances[i] = result.top().first;
            result.pop();
        }
    });
    return status == 0 ? found : -1;
}

}  // extern "C"
