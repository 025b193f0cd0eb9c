#if canImport(Glibc)
import Glibc
#endif

/// glibc's allocator gives each thread that allocates its own arena (up to 8 per core), and an
/// arena keeps the memory its thread freed for reuse by that thread. The relay runs about a dozen
/// threads (cooperative pool, one queue per Postgres, Redis and HTTP connection, the health
/// server), so each batch's short-lived allocations are spread over as many arenas, each holding on
/// to its own high-water mark.
///
/// Measured with `outbox-bench memory` (1,000,000 `redis.set` events): peak RSS 72-73 MB with the
/// default, 58 MB with two arenas, 53 MB with one; drain rates unchanged within noise (redis.set
/// 68,000-72,000 events/s, drain-redis 38,000-40,000 events/s in both).
public enum MallocArenas {
    /// Limits glibc to `count` arenas, unless `MALLOC_ARENA_MAX` in the environment already says
    /// how many. Call first thing in `main`, before other threads allocate.
    public static func limit(to count: Int32 = 1) {
        #if canImport(Glibc)
        guard getenv("MALLOC_ARENA_MAX") == nil else { return }
        // <malloc.h> is not part of the Glibc module: look mallopt up (glibc only; a no-op elsewhere).
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }  // RTLD_DEFAULT
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        let mArenaMax: Int32 = -8  // M_ARENA_MAX in <malloc.h>
        _ = unsafeBitCast(symbol, to: Mallopt.self)(mArenaMax, count)
        #endif
    }
}
