/* Built with frame pointers and without any CFI (-fno-omit-frame-pointer
 * -fno-asynchronous-unwind-tables -fno-unwind-tables): the unwinder must
 * cross this frame with frame pointers, between two CFI-described ones. */
static volatile int fp_sink;

__attribute__((noinline)) void fp_middle(void (*next)(void))
{
    next();
    fp_sink++;
}
