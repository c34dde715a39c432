//
// The text pieces of the trainer's progress line: on a terminal
//
//   [=========>          ]  45% step 270/600 | loss 0.0911 | lr 6.96e-03 | 2364 tok/s | ETA 00:26
//
// redrawn in place each step; otherwise the same line without the bar every
// logging.every_steps steps.
#ifndef PEFT_TRAINERS_PROGRESS_H_
#define PEFT_TRAINERS_PROGRESS_H_

#include <cstdint>
#include <string>

namespace peft::trainers {

/// A duration as "MM:SS", or "H:MM:SS" from one hour on; negative or
/// non-finite values read as 0.
std::string clock_text(double seconds);

/// "[=========>          ]  45%": `done` of `total` as a bar of 20 cells and
/// a percentage (clamped to 0-100%).
std::string progress_bar(int64_t done, int64_t total);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_PROGRESS_H_
