import Foundation
import OutboxCore

/// Where a lane's next claim starts and how many heads it takes: the claim planning of
/// `OutboxStore.claim`, as values and pure functions (tested without a server in
/// `RelayLogicTests`). docs/DESIGN.md ("Draining a deep backlog") tells the why of each rule.
enum ClaimPlanning {
    /// A claim's place in a pass over one destination's events.
    struct Scan: Equatable {
        /// Heads with ids up to this one are left for the next pass.
        var cursor: Int64 = 0
        /// Claim again without waiting: the pass has not reached the end, or it did work.
        var more = false
    }

    /// Rows one claim looks at for heads: enough for a full claim, and a bound on the work of a
    /// claim that finds few (few keys, or keys another lane or relay holds).
    static func window(batchSize: Int) -> Int { max(1_000, 2 * batchSize) }

    /// Where the claim after one that started `from` (0: the front) begins:
    /// - after a full claim (`batchSize` heads), after its last head;
    /// - after a short claim that stopped at the window's end (`windowEnd`), after the window:
    ///   its other heads are held by another lane or relay, or waiting for a retry, and are left
    ///   for the next pass;
    /// - after a claim that reached the end, at the front (a new pass, which also picks up retries
    ///   come due); at once if this pass did any work.
    /// A key that took its whole share of a claim (`fullKeysLast`: its last claimed id) may have
    /// more events just after it, and the next claim starts no later than that: a few hot keys
    /// then drain claim after claim instead of once per pass.
    static func nextScan(from: Int64, heads: [Int64], batchSize: Int, windowEnd: Int64?, fullKeysLast: [Int64]) -> Scan {
        var scan: Scan
        if heads.count >= batchSize, let last = heads.max() {
            scan = Scan(cursor: last, more: true)
        } else if let windowEnd {
            scan = Scan(cursor: windowEnd, more: true)
        } else {
            scan = Scan(cursor: 0, more: !heads.isEmpty || from != 0)
        }
        if let lowest = fullKeysLast.min() {
            scan.cursor = scan.cursor == 0 ? lowest : min(scan.cursor, lowest)
            scan.more = true
        }
        return scan
    }

    /// What a lane remembers of its last claims to decide where it claims next.
    struct Course: Equatable {
        /// Where the keys of its last claim that found heads go on (`OutboxStore.Claim.resume`).
        var resume: Int64?
        /// Empty windows since the lane last turned to the front or back to its walk.
        var emptyWindows = 0
        /// Empty windows the lane walks before it looks at the front again.
        var walk = ClaimPlanning.emptyWindowsBeforeFront
        /// While the lane looks at the front: where its walk goes on.
        var walkFrom: Int64?
    }

    /// The most heads a lane's next claim takes, after a claim that took `heads` under `limit`.
    ///
    /// A claim's Postgres work is mostly per head: the head test of every row up to the last head,
    /// the head's row lock (a heap write), an index descent for its followers. Keys with deep
    /// backlogs are therefore cheaper to drain with fewer heads and more events each: drain-redis
    /// (200 events per key) took 500 heads × 10 events per claim at 4.9–6.4 µs of Postgres per
    /// event, 50 × 100 at 3.5 µs (docs/PERFORMANCE.md). So after a claim in which every key took
    /// its whole share (`saturated`) the limit halves, down to the heads that fill
    /// `relay.batch_events` at `relay.max_per_key` each; after one in which a key ran out it
    /// doubles, up to `relay.batch_size`, so many shallow keys (one event each) go `batch_size` a
    /// claim. A claim that found no heads says nothing about the keys.
    static func nextHeadsLimit(_ limit: Int, heads: Int, saturated: Bool, settings: RelaySettings) -> Int {
        let floor = min(settings.batchSize, max(1, settings.batchEvents / settings.maxPerKey))
        guard heads > 0 else { return limit }
        return saturated ? max(floor, limit / 2) : min(settings.batchSize, limit * 2)
    }

    /// Whether a lane claims again at once after a claim that said `next`: as the claim says, but at
    /// the end of a pass (`next.cursor == 0`) only if some claim of the pass found heads. A pass
    /// that found none — every key held by another relay, or waiting for a retry — would find none
    /// again, claim after claim: a relay beside another that held three hot keys made 120 empty
    /// claims a second. The lane then waits for a wake-up (new events, the fallback poll, a retry
    /// coming due, a sibling's full claim).
    static func claimAgainAtOnce(after next: Scan, heads: Int, passFoundHeads: inout Bool) -> Bool {
        passFoundHeads = passFoundHeads || heads > 0
        guard next.cursor == 0 else { return next.more }
        defer { passFoundHeads = false }
        return passFoundHeads
    }

    /// Empty windows in a row after which a lane looks at the front; as many again there and it
    /// goes back to its walk, which is twice as long each time.
    static let emptyWindowsBeforeFront = 2

    /// Where a lane claims next after a claim whose window (ending at `windowEnd`) held no heads:
    /// where the keys of its own last claim go on (`course.resume`), if that lies ahead; else after
    /// the window. But after `course.walk` empty windows in a row, at the front; and if the front has
    /// no heads in as many windows, back where the walk left off.
    ///
    /// The events of a lane's own keys after its last claim are followers until that claim is
    /// acknowledged, and a lane among them stepped through them one window at a time, finding no
    /// heads. A lane ahead of every head walked the rest of the backlog finding none (drain-redis:
    /// half the runs at 27–33 % of the SQL bound instead of ~40 %, docs/PERFORMANCE.md): every key's
    /// head is its oldest event, so the lane soon looks at the front. The heads may also lie
    /// further on (keys at the front held by another relay or waiting for a retry), so the walk goes
    /// on afterwards, each time for twice as many windows: the lane still reaches every head, in at
    /// most about twice the claims. Heads passed over are found by the next pass.
    static func afterEmptyWindow(_ course: inout Course, windowEnd: Int64) -> Int64 {
        course.emptyWindows += 1
        if let walkFrom = course.walkFrom {
            guard course.emptyWindows >= emptyWindowsBeforeFront else { return windowEnd }
            (course.walkFrom, course.emptyWindows, course.walk) = (nil, 0, 2 * course.walk)
            return max(walkFrom, windowEnd)
        }
        let next = course.resume.flatMap { $0 > windowEnd ? $0 : nil } ?? windowEnd
        guard course.emptyWindows >= course.walk else { return next }
        (course.walkFrom, course.emptyWindows) = (next, 0)
        return 0
    }
}
