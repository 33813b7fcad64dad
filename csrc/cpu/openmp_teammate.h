// The second thread of a pipelined call, chosen per call: torch's own OpenMP worker when it is free
// for it, else the helper thread (helper_thread.h).
//
// Why: after any of torch's parallel operations (an nn.Linear, a loss, an optimizer step, nn.RNN's
// per-step GEMMs), torch's OpenMP worker keeps spinning on the second core for its spin count,
// about 8 ms on the 2-core machines here, waiting for the caller's next parallel region. The
// helper, in the idle scheduling class, gets no time on a core that thread holds, so in a program
// that interleaves rnnkern calls with torch's operations (every training loop, the benchmark
// runner) the second core did nothing for rnnkern (PERFORMANCE.md, version 23). That spinning
// worker is waiting for this very thread, so a team of two started here (`#pragma omp parallel`)
// puts it to work within a microsecond.
//
// What a team costs: its closing barrier waits for the worker. The parts handed to it are blocks
// the caller takes back when the worker has not finished them (step_blocks.h), so with the worker
// on a core of its own the wait is at most the block it is on; but a worker that another program
// has preempted is waited for until it is scheduled again, milliseconds, and a worker spinning
// after the call makes three busy threads on two cores, which slows the caller (version 10). So a
// team call that waited long at its end for a worker that was not running, or during which the
// caller itself did not get its core for a time slice, sends the next half second's calls to the
// helper thread, whose worst case is one thread's time.
//
// Teams are used (kAuto) only where torch runs exactly two threads (a team of two in a larger pool
// would end its other threads), outside any parallel region, and never in the child of a fork().
#pragma once

#include <functional>

namespace rnnkern::cpu {

// Runs caller_part on this thread and helper_part beside it: on torch's OpenMP worker as the
// second of a team of two, or offered to the helper thread (offer_to_helper), or not at all with
// one thread. helper_part may so run after caller_part has returned, or never: caller_part must
// compute whatever helper_part has not, and close their hand-off (CloseOnExit) before it returns,
// which also ends helper_part. caller_part's argument says whether a second thread may run
// helper_part at all (false: one thread, a declined offer, a team of one). Exceptions from
// caller_part reach the caller; helper_part's are dropped (the caller meets them again when it
// computes the same block).
void beside_helper(std::function<void()> helper_part, const std::function<void(bool)>& caller_part);

// Whether beside_helper, called now on this thread, would run helper_part on torch's OpenMP worker
// as a team of two (rather than on the helper thread, or on no second thread at all).
bool helper_part_on_a_team();

// Which second thread beside_helper uses: kAuto as above, or always one (for the tests).
enum class TeammateMode : int { kAuto = 0, kHelperThread = 1, kOpenMPTeam = 2 };
TeammateMode set_teammate_mode(TeammateMode mode);  // returns the previous mode

// How many beside_helper calls ran as teams of two in this process (for the tests).
int64_t team_calls();

}  // namespace rnnkern::cpu
