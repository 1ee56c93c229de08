// <windows.h> for the host code's memory and load probes, without its min and max macros (which
// break std::min and std::max) or the rarely used parts of the API.
#pragma once

#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#endif
