/*
 * Boot sector used by vm_runtime/accel.py to probe whether KVM can run ordinary guests here.
 *
 * It walks the mode switches every BIOS boot loader and kernel makes: real mode, 32-bit protected
 * mode with an interrupt and IRET (where syslinux stops on a PVM host with "KVM internal error ...
 * emulation failure"), back to real mode, then 64-bit long mode, printing one letter per stage on
 * COM1 and finally the line CDI-KVM-PROBE-OK, then writing to isa-debug-exit (port 0xf4).
 *
 * accel.py embeds the assembled bytes; rebuild them with:
 *   as --32 -o p.o kvm_probe.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -e _start -o p.bin p.o
 * tests/unit/test_accel.py checks that the embedded bytes still match this source.
 */
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    movw $0x3f8, %dx
    movb $'R', %al
    outb %al, %dx
    lgdtl gdtr
    lidtl idtr
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32
    .code32
pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x7c00, %esp
    movb $'P', %al
    outb %al, %dx
    int $3
    movb $'J', %al
    outb %al, %dx
    ljmp $0x18, $pm16
handler:
    movb $'I', %al
    outb %al, %dx
    iret
    .code16
pm16:
    movw $0x20, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr0, %eax
    andl $0xfffffffe, %eax
    movl %eax, %cr0
    ljmp $0, $rm
rm:
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    lidtl rmidtr
    movb $'B', %al
    outb %al, %dx
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32b
    .code32
pm32b:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x1000, %edi
    xorl %eax, %eax
    movl $0xc00, %ecx
    rep stosl
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    movl $0x83, 0x3000
    movl $0x1000, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x28, $lm64
    .code64
lm64:
    movw $0x3f8, %dx
    movl $msg, %esi
next:
    lodsb
    testb %al, %al
    jz done
    outb %al, %dx
    jmp next
done:
    movw $0xf4, %dx
    movb $0x10, %al
    outb %al, %dx
hang:
    hlt
    jmp hang
    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00009a000000ffff
    .quad 0x000092000000ffff
    .quad 0x00af9a000000ffff
gdtr:
    .word gdtr - gdt - 1
    .long gdt
idt:
    .quad 0, 0, 0
    .word handler, 0x08, 0x8e00, 0
idtr:
    .word idtr - idt - 1
    .long idt
rmidtr:
    .word 0x3ff
    .long 0
msg:
    .asciz "\r\nCDI-KVM-PROBE-OK\r\n"
    .org 510
    .word 0xaa55
